// User-assigned managed identity shared by the Function App for storage
// (AzureWebJobsStorage + deployment container), Key Vault references and
// Application Insights (Entra ID ingestion).
param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
