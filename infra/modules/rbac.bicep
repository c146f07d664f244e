// Data-plane role assignments for the app's user-assigned identity (and,
// optionally, for the deploying user so azd can read/rotate the API key secret).
// Role definition IDs are the built-in GUIDs (identical in every tenant).
param storageAccountName string
param keyVaultName string
param applicationInsightsName string

@description('Principal (object) ID of the user-assigned managed identity used by the Function App.')
param appPrincipalId string

@description('Optional principal (object) ID of the deploying user or service principal. Gets Key Vault Secrets Officer so azd can read the existing API key on re-provision and operators can rotate it. Empty = no assignment.')
param deployerPrincipalId string = ''

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
}

resource storage 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: keyVaultName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// AzureWebJobsStorage and the Flex deployment container: blob only.
// "No extension (host only) | Storage Blob Data Owner | Used for general coordination,
// default key store" (includes/functions-azurewebjobsstorage-permissions.md, the table behind
// functions-reference.md "Connecting to host storage with an identity"); the Flex
// deployment package is a blob in a container of the same account. Queue and Table roles
// are needed only by blob triggers (queues), Durable Functions (queues + tables) and other
// extensions that keep state in AzureWebJobsStorage; this app has HTTP triggers only, so it
// gets neither, as in functions-quickstart-python-http-azd (enableQueue/enableTable: false).
// Without table access the host logs once that it cannot record its diagnostic events (the
// table "AzureFunctionsDiagnosticEvents<yyyyMM>") and stops that service; requests are not
// affected (azure-functions-host DiagnosticEventTableStorageRepository).
resource appBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Entra ID authenticated telemetry ingestion (DisableLocalAuth: true).
resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Resolves the @Microsoft.KeyVault(...) reference in EMBEDDINGS_API_KEYS (read-only).
resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// principalType is omitted on purpose: the deployer may be a user or a service principal.
resource deployerSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(vault.id, deployerPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    principalId: deployerPrincipalId
  }
}
