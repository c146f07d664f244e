// Key Vault holding the API key(s) served to the app through a Key Vault
// reference. RBAC authorization only (no access policies), soft delete and purge
// protection on.
param name string
param location string
param tags object

@description('Name of the secret that holds EMBEDDINGS_API_KEYS (comma-separated keys).')
param apiKeySecretName string

@secure()
@description('Value of EMBEDDINGS_API_KEYS: one key, or several separated by commas during rotation.')
param apiKeys string

@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' = {
  // checkov:skip=CKV_AZURE_109: The Function App runs without VNet integration and resolves the Key Vault reference over the public endpoint (App Service is not a trusted service for the firewall bypass); access is RBAC-only and limited to the app identity and the deployer.
  // checkov:skip=CKV_AZURE_189: Same reason as CKV_AZURE_109: public network access is needed for Key Vault references from a non-VNet-integrated Flex Consumption app; data-plane access still requires Entra ID + RBAC.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource apiKeySecret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = {
  // checkov:skip=CKV_AZURE_41: An expiry date would make the Key Vault reference stop resolving and silently lock every client out; keys are rotated on demand (see docs/deploy.md, "Key rotation") instead of expiring.
  parent: vault
  name: apiKeySecretName
  properties: {
    value: apiKeys
    contentType: 'text/plain; comma-separated API keys'
    attributes: {
      enabled: true
    }
  }
}

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
// Versionless URI: the app always resolves the latest secret version.
output apiKeySecretUri string = apiKeySecret.properties.secretUri
