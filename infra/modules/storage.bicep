// Storage account for the Functions host (AzureWebJobsStorage) and the Flex
// Consumption deployment package container. Shared-key auth is disabled: every
// caller (the host, the platform's package download, azd deploy) uses Entra ID.
param name string
param location string
param tags object
param deploymentContainerName string
// A zone-redundant Flex plan needs zone-redundant host storage (Microsoft Learn,
// reliability-functions: "You must use a zone redundant storage account (ZRS) for your
// function app's default host storage account"): otherwise a zone outage takes the app
// package and the host's storage with it.
param zoneRedundant bool = false

// Service endpoint built from the cloud's storage suffix (core.windows.net in public Azure,
// core.usgovcloudapi.net, core.chinacloudapi.cn, ...), as the Flex samples do
// (Azure-Samples/azure-functions-flex-consumption-samples, IaC/bicep/main.bicep:
// 'https://${name}.blob.${environment().suffixes.storage}'). It equals
// primaryEndpoints.blob without the trailing slash as long as dnsEndpointType is
// 'Standard' (below; tests/test_infra.py holds both together).
var blobServiceUri = 'https://${name}.blob.${environment().suffixes.storage}'

resource storage 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  // checkov:skip=CKV_AZURE_35: Flex Consumption without VNet integration reaches storage over its public endpoint; shared keys are disabled so only Entra ID principals with data-plane RBAC can read or write. Private endpoints + VNet integration are a documented hardening option.
  // checkov:skip=CKV_AZURE_59: Same reason as CKV_AZURE_35 (public endpoint needed without VNet integration); anonymous blob access and shared-key access are both disabled.
  // checkov:skip=CKV_AZURE_206: Holds only the re-creatable deployment package and Functions host bookkeeping (no customer data); LRS keeps cost minimal and `azd deploy` restores the package; ZRS with a zone-redundant plan (zoneRedundant), which needs it.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: zoneRedundant ? 'Standard_ZRS' : 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    dnsEndpointType: 'Standard'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

output name string = storage.name
output id string = storage.id
output blobServiceUri string = blobServiceUri
output deploymentContainerUrl string = '${blobServiceUri}/${deploymentContainer.name}'
