// Flex Consumption (FC1) plan, Linux. A module of its own so that main.bicep can create it first:
// the Key Vault waits for it, so a region that offers no Flex Consumption (or, with zoneRedundant,
// no zone-redundant Flex Consumption) fails the deployment here, before the purge-protected vault
// exists (a vault once created stays reserved, soft-deleted, for its retention period after
// `azd down`). The plan itself costs nothing: Flex bills instances, not plans. (Microsoft's
// quickstart, functions-quickstart-python-http-azd, lists the Flex regions in an @allowed on
// `location` instead: a list that goes stale as regions are added. Here the platform decides.)
param name string
param location string
param tags object

@description('Zone-redundant plan (only in regions that support it for Flex Consumption).')
param zoneRedundant bool = false

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Zone redundancy for Flex Consumption is region-dependent; it is exposed as the zoneRedundant parameter (default off) instead of being forced.
  name: name
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

output id string = plan.id
output name string = plan.name
