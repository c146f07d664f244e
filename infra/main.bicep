// Embeddings API on Azure Functions Flex Consumption.
// Resource-group scoped so it works both with `azd up` (set AZURE_RESOURCE_GROUP
// or let azd prompt) and with `az deployment group create`. See docs/deploy.md.
targetScope = 'resourceGroup'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used for the azd-env-name tag and the unique resource-name suffix.')
param environmentName string

@minLength(1)
@description('Region for all resources. It must support Flex Consumption (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string = resourceGroup().location

@description('Optional object ID of the deploying user/service principal (azd sets AZURE_PRINCIPAL_ID). Gets Key Vault Secrets Officer on the vault so the API key can be read on re-provision and rotated.')
param principalId string = ''

@secure()
@description('Current value of the embeddings-api-key secret (EMBEDDINGS_API_KEYS), whose entries are kept. azd reads it back with secretOrRandomPassword. Empty on a first manual deployment; on later ones pass the current value.')
param embeddingsApiKey string = ''

@description('Comma-separated names of the callers that get an API key, e.g. "primary,alice" (letters, digits, ".", "_", "-"; 1-64 characters each). A deployment adds a key for every name not yet in the secret; it never changes or removes an existing entry. No name at all (e.g. ","; azd substitutes primary for an empty value) and no keys issued before: no API keys, Microsoft Entra ID only.')
param apiKeyNames string = 'primary'

@description('Entra ID tenant whose tokens the app accepts. Empty = subscription().tenantId.')
param entraTenantId string = subscription().tenantId

@description('Comma-separated accepted token audiences (aud), e.g. "api://<app-client-id>,<app-client-id>"; "https://ml.azure.com" only with entraAllowedClientIds (docs/deploy.md, Option B). Empty = Entra ID auth not configured (API keys only).')
param entraAudiences string = ''

@description('Comma-separated app roles a token must carry (roles claim). Empty = no role requirement.')
param entraRequiredRoles string = ''

@description('Comma-separated client (application) IDs allowed to call (azp/appid claim). Empty = any client of the tenant that can obtain a token for an accepted audience.')
param entraAllowedClientIds string = ''

@description('Entra ID authority host, e.g. for a cloud other than the one deployed to. Empty = the login endpoint of the cloud you deploy to (environment().authentication.loginEndpoint).')
param entraAuthority string = ''

@allowed([
  '3.11'
  '3.12'
])
@description('Python version the app runs on: 3.12 (supported on Azure Functions until October 2028) or 3.11 (until October 2027), the two it is tested on. Changing it on a running app fails its requests until the code is deployed again (its packages are built for one version; azd up does both).')
param pythonVersion string = '3.12'

@allowed([
  512
  2048
  4096
])
@description('Flex Consumption instance memory size (MB).')
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
@description('Upper bound for on-demand instances (a scale bound, not a spending cap; always-ready instances come on top).')
param maximumInstanceCount int = 40

@minValue(0)
@maxValue(1000)
@description('Always-ready instances for the HTTP functions (billed all the time, no cold start for the first requests); 0 = none, on demand only (with zoneRedundant the platform keeps two anyway, and 1 becomes 2). Set here rather than with the CLI: each provision writes functionAppConfig.scaleAndConcurrency whole.')
param alwaysReadyHttpInstances int = 0

@minValue(0)
@maxValue(1000)
@description('Concurrent HTTP requests routed to one instance before the platform scales out; also the Python worker\'s thread pool. The app batches concurrent requests, so more than 1 pays (Python\'s platform default is 1). 0 = by instance size, 8 per CPU core: 2 at 512 MB (0.25 core), 8 at 2048 MB (1 core), 16 at 4096 MB (2 cores).')
param httpPerInstanceConcurrency int = 0

@description('EMBEDDINGS_ORT_INTRA_OP_THREADS app setting (onnxruntime threads per inference worker); 0 = leave unset (app default: cores ÷ workers).')
@minValue(0)
param ortIntraOpThreads int = 0

@description('EMBEDDINGS_INFERENCE_WORKERS app setting (batches run side by side); 0 = leave unset (app default: one per core).')
@minValue(0)
@maxValue(32)
param inferenceWorkers int = 0

@description('EMBEDDINGS_OPENAI_TRUNCATE app setting: what the OpenAI route does with an input over the model\'s token limit (NONE refuses it, as the app does by default; END keeps its first tokens, START its last).')
@allowed(['NONE', 'END', 'START'])
param openaiTruncate string = 'NONE'

@description('Zone-redundant Flex Consumption plan (only in regions that support it). Not free: the platform then keeps at least two always-ready instances, billed as such whatever alwaysReadyHttpInstances says (1 is raised to 2, the least it accepts), and the host storage account is zone-redundant (ZRS; an existing LRS account must be converted first, see docs/deploy.md).')
param zoneRedundant bool = false

// With zone redundancy the platform keeps at least two always-ready instances per function
// group, billed as always-ready, whatever is configured (Microsoft Learn, reliability-functions),
// and "no less than two always-ready instances can be configured" (flex-consumption-plan, "Always
// ready instances"): a count of 1 becomes the 2 that is billed anyway; 0 leaves the platform's.
var effectiveAlwaysReady = (zoneRedundant && alwaysReadyHttpInstances == 1) ? 2 : alwaysReadyHttpInstances

@minValue(7)
@maxValue(90)
@description('Key Vault soft-delete retention, fixed when the vault is created (Key Vault does not let it change afterwards: set it before the first deployment). With purge protection on, the vault name stays reserved this long after deletion.')
param keyVaultSoftDeleteRetentionInDays int = 90

@description('Alert rule on the share of API requests answered 5xx (Application Insights requests).')
param alertServerErrorsEnabled bool = true

@minValue(0)
@maxValue(100)
@description('5xx alert threshold: percent of the API requests in 15 minutes.')
param alertServerErrorPercent int = 1

@description('Alert rule on the share of API requests answered 429.')
param alertThrottledEnabled bool = true

@minValue(0)
@maxValue(100)
@description('429 alert threshold: percent of the API requests in 15 minutes.')
param alertThrottledPercent int = 5

@description('Alert rule on the share of API requests answered 401 (keys that do not resolve refuse every caller).')
param alertUnauthorizedEnabled bool = true

@minValue(0)
@maxValue(100)
@description('401 alert threshold: percent of the API requests in 15 minutes.')
param alertUnauthorizedPercent int = 50

@description('Alert rule on the p95 duration of successful API requests.')
param alertLatencyEnabled bool = true

@minValue(1)
@description('p95 latency alert threshold (milliseconds, over 15 minutes).')
param alertLatencyP95Ms int = 3000

@minValue(1)
@description('Fewer API requests than this in 15 minutes never alert (rates of a handful of calls are noise).')
param alertMinimumRequests int = 20

@description('Optional action group resource ID the alert rules notify. Empty = alerts show in the portal only.')
param alertActionGroupId string = ''

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-api-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
var apiKeySecretName = 'embeddings-api-key'
// Whether this deployment was given keys to keep (azd read the secret back): the rule of
// keyvault.bicep's keptApiKeys (a named entry, or a value of 32+ characters; azd's 15-character
// placeholder is not kept). With the module's hasApiKeys (the marker or a name) it decides whether
// the app gets the Key Vault reference: a group that lost its marker, provisioned with no name,
// keeps serving the keys it was given. One bit of the secret's value, which the app's settings
// show anyway; passed as a module parameter, never an output.
var apiKeysGiven = contains(embeddingsApiKey, ':') || length(trim(embeddingsApiKey)) >= 32

var effectiveTenantId = empty(entraTenantId) ? subscription().tenantId : entraTenantId
// The deploying cloud's Entra ID endpoint (login.microsoftonline.com in public Azure,
// login.microsoftonline.us in Azure Government, ...); no hard-coded host (Bicep linter
// no-hardcoded-env-urls). loginEndpoint ends with '/'; the app wants the authority without it.
var cloudLoginEndpoint = environment().authentication.loginEndpoint
var cloudAuthority = endsWith(cloudLoginEndpoint, '/') ? substring(cloudLoginEndpoint, 0, length(cloudLoginEndpoint) - 1) : cloudLoginEndpoint
var effectiveAuthority = empty(entraAuthority) ? cloudAuthority : entraAuthority
// Flex gives an instance CPU in proportion to its memory (flex-consumption-plan.md, "Instance
// sizes": 0.25 / 1 / 2 cores), and a value set here is kept when the size changes
// (functions-concurrency.md), so the default follows the size: 8 requests per core (the value
// infra/ used at every size before; at 512 MB it put 8 requests on a quarter core), at least 2.
// (Conditions in parentheses: pycep, which tests/ evaluate this with, binds `?` before `>`.)
var effectiveHttpConcurrency = (httpPerInstanceConcurrency > 0) ? httpPerInstanceConcurrency : ((instanceMemoryMB == 512) ? 2 : ((instanceMemoryMB == 4096) ? 16 : 8))

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-api-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    zoneRedundant: zoneRedundant
  }
}

// Before the vault, alongside identity, monitoring and storage (none purge-protected): a region
// without Flex Consumption (or without zone-redundant Flex Consumption, with zoneRedundant) fails
// the deployment here (plan.bicep). A refusal of the site itself, e.g. a Python version the
// region does not offer on Flex, still comes after the vault exists.
module plan 'modules/plan.bicep' = {
  name: 'plan'
  params: {
    name: 'plan-${resourceToken}'
    location: location
    tags: tags
    zoneRedundant: zoneRedundant
  }
}

// The vault has purge protection: once created, its name stays reserved for the retention
// period after deletion. It waits for the plan, so a deployment the plan refuses creates none.
module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  dependsOn: [
    plan
  ]
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    apiKeySecretName: apiKeySecretName
    currentApiKeys: embeddingsApiKey
    apiKeyNames: apiKeyNames
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    tags: tags
    namePrefix: 'alert-${resourceToken}'
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    serverErrorAlertEnabled: alertServerErrorsEnabled
    serverErrorThresholdPercent: alertServerErrorPercent
    throttledAlertEnabled: alertThrottledEnabled
    throttledThresholdPercent: alertThrottledPercent
    unauthorizedAlertEnabled: alertUnauthorizedEnabled
    unauthorizedThresholdPercent: alertUnauthorizedPercent
    latencyAlertEnabled: alertLatencyEnabled
    latencyP95ThresholdMs: alertLatencyP95Ms
    minimumRequests: alertMinimumRequests
    actionGroupId: alertActionGroupId
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  dependsOn: [
    rbac
  ]
  params: {
    planId: plan.outputs.id
    name: functionAppName
    location: location
    tags: tags
    serviceName: 'api'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageBlobServiceUri: storage.outputs.blobServiceUri
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    apiKeySecretUri: keyVault.outputs.apiKeySecretUri
    hasApiKeys: (keyVault.outputs.hasApiKeys) || apiKeysGiven
    pythonVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    alwaysReadyHttpInstances: effectiveAlwaysReady
    httpPerInstanceConcurrency: effectiveHttpConcurrency
    entraTenantId: effectiveTenantId
    entraAudiences: entraAudiences
    entraRequiredRoles: entraRequiredRoles
    entraAllowedClientIds: entraAllowedClientIds
    entraAuthority: effectiveAuthority
    ortIntraOpThreads: ortIntraOpThreads
    inferenceWorkers: inferenceWorkers
    openaiTruncate: openaiTruncate
  }
}

// Outputs become azd environment values (.azure/<env>/.env). Never output secrets.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_FUNCTION_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_URL string = functionApp.outputs.uri
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = functionApp.outputs.uri
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.uri
output EMBEDDINGS_API_KEY_SECRET_NAME string = apiKeySecretName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output AZURE_USER_ASSIGNED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
