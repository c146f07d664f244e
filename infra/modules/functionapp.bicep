// Linux Python 3.12 Function App on a Flex Consumption (FC1) plan (plan.bicep).
// All secrets-free settings are plain app settings; the API key(s) come from Key
// Vault through a Key Vault reference resolved with the user-assigned identity.
//
// Flex Consumption refuses or ignores many settings other plans use. Nothing listed in
// "Flex Consumption plan deprecations" (learn.microsoft.com/azure/azure-functions/
// functions-app-settings#flex-consumption-plan-deprecations) may appear here:
// tests/test_infra.py holds that table and fails if any of it comes back.

// The Flex Consumption plan (plan.bicep, created before the Key Vault).
param planId string
param name string
param location string
param tags object

@description('azd service name; must match the service in azure.yaml.')
param serviceName string = 'api'

@description('Resource ID of the user-assigned managed identity.')
param identityId string

@description('Client ID of the user-assigned managed identity.')
param identityClientId string

@description('Blob service endpoint of the host storage account, https://<account>.blob.<environment().suffixes.storage> (no trailing slash).')
param storageBlobServiceUri string

@description('URL of the blob container that holds the Flex deployment package.')
param deploymentContainerUrl string

param applicationInsightsConnectionString string

@description('Versionless Key Vault secret URI holding EMBEDDINGS_API_KEYS.')
param apiKeySecretUri string

@description('Whether the secret holds API keys. False (Microsoft Entra ID only, no key names): EMBEDDINGS_API_KEYS is not set.')
param hasApiKeys bool

@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.12'

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

// Always-ready instances of the 'http' function group (0: none).
@minValue(0)
@maxValue(1000)
param alwaysReadyHttpInstances int = 0

@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 8

// Entra ID (bearer token) settings, already resolved by main.bicep.
param entraTenantId string
param entraAudiences string
param entraRequiredRoles string
param entraAllowedClientIds string
param entraAuthority string

@description('EMBEDDINGS_ORT_INTRA_OP_THREADS (threads per inference worker); 0 = leave unset (app default).')
@minValue(0)
param ortIntraOpThreads int = 0

@description('EMBEDDINGS_INFERENCE_WORKERS; 0 = leave unset (app default: one per core).')
@minValue(0)
@maxValue(32)
param inferenceWorkers int = 0

@description('EMBEDDINGS_OPENAI_TRUNCATE: NONE (the app default), END or START.')
@allowed(['NONE', 'END', 'START'])
param openaiTruncate string = 'NONE'

// ---------------------------------------------------------------- app settings
// Every app setting is built here, in groups, and joined once in `appSettings` below.
// To add settings (e.g. telemetry), add a group and append it there; the tests read
// the groups from that concat() and fail on duplicates and on Flex-deprecated names.

// Identity-based host storage (shared keys are disabled on the account), set as the
// samples do (AzureWebJobsStorage__blobServiceUri + __credential + __clientId). The URI is
// built from environment().suffixes.storage, so it is right in every cloud.
// AzureWebJobsStorage__accountName is not used: the host then assumes core.windows.net,
// "valid only if the account isn't in a sovereign cloud" (functions-reference.md,
// "Connecting to host storage with an identity"; the host's StorageServiceUriOptions
// hard-codes DefaultEndpointSuffix = "core.windows.net").
// Only the blob service is configured. Host storage "for general coordination, default key
// store" needs blob only ("No extension (host only): Storage Blob Data Owner",
// includes/functions-azurewebjobsstorage-permissions.md); queues and tables are for blob
// triggers, Durable Functions and the like, which this app (HTTP triggers only) does not
// have. functions-quickstart-python-http-azd does the same (enableQueue/enableTable: false).
var hostStorageSettings = [
  {
    name: 'AzureWebJobsStorage__blobServiceUri'
    value: storageBlobServiceUri
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
]

// Application Insights with Entra ID ingestion (local auth disabled).
var monitoringSettings = [
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: applicationInsightsConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }
]

// API key(s): Key Vault reference, resolved with keyVaultReferenceIdentity. None when the
// deployment has no keys (Entra ID only): a reference to a secret that does not exist would stay
// unresolved, which the app reports as a configuration error.
var apiKeySettings = hasApiKeys ? [
  {
    name: 'EMBEDDINGS_API_KEYS'
    value: '@Microsoft.KeyVault(SecretUri=${apiKeySecretUri})'
  }
] : []

// Entra ID bearer-token auth is switched on by EMBEDDINGS_ENTRA_TENANT_ID; the app then
// refuses to start without audiences. So the settings are only written when at least
// one audience is configured; otherwise the API accepts API keys only.
var entraSettings = (!empty(entraAudiences)) ? [
  {
    name: 'EMBEDDINGS_ENTRA_TENANT_ID'
    value: entraTenantId
  }
  {
    name: 'EMBEDDINGS_ENTRA_AUDIENCES'
    value: entraAudiences
  }
  {
    name: 'EMBEDDINGS_ENTRA_REQUIRED_ROLES'
    value: entraRequiredRoles
  }
  {
    name: 'EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS'
    value: entraAllowedClientIds
  }
  {
    name: 'EMBEDDINGS_ENTRA_AUTHORITY'
    value: entraAuthority
  }
] : []

// The app batches concurrent requests in one inference queue per process
// (docs/inference-queue.md), so requests must be able to meet there: the Python worker's thread
// pool is sized to the host's per-instance HTTP concurrency (its own default is cores + 4).
var workerSettings = [
  {
    name: 'PYTHON_THREADPOOL_THREAD_COUNT'
    value: string(httpPerInstanceConcurrency)
  }
]

var threadSettings = (ortIntraOpThreads > 0) ? [
  {
    name: 'EMBEDDINGS_ORT_INTRA_OP_THREADS'
    value: string(ortIntraOpThreads)
  }
] : []

var inferenceWorkerSettings = (inferenceWorkers > 0) ? [
  {
    name: 'EMBEDDINGS_INFERENCE_WORKERS'
    value: string(inferenceWorkers)
  }
] : []

// On CPUs with AMX the default deployment runs inputs of 129+ tokens on OpenVINO, which holds
// ~225 MiB more for the process's life and peaks ~250 MiB higher (docs/benchmarks.md, "Memory over time"):
// more than a 512 MB instance has. The app also keeps them on ONNX Runtime wherever it sees less
// than 1,536 MiB (cgroup limit or the machine's), but whether a Flex instance shows its size to the
// process is not documented, so the template says it. Other sizes keep the app's default (auto).
var longInputSettings = (instanceMemoryMB == 512) ? [
  {
    name: 'EMBEDDINGS_LONG_INPUT_RUNTIME'
    value: 'onnxruntime'
  }
] : []

// Images on a 512 MB instance (2 requests at once there): a process whose decode budget is the
// default 256 MiB and whose requests carry 32 MiB bodies peaked at ~580 MB with two of them and was
// killed in a 512 MiB cgroup; with 128 MiB and 16 MiB bodies it peaked at 426 MB (docs/images.md,
// "Memory"). Larger pictures and requests are refused with a 422 or 413 naming the setting. The app
// takes the same values by itself where its cgroup (or the machine) shows less than 1,536 MiB;
// set here as well, since whether a Flex instance shows its size to the process is not documented.
var smallImageSettings = (instanceMemoryMB == 512) ? [
  {
    name: 'EMBEDDINGS_MAX_IMAGE_DECODE_BYTES'
    value: '134217728'
  }
  {
    name: 'EMBEDDINGS_MAX_IMAGE_BODY_BYTES'
    value: '16777216'
  }
] : []

// OpenAI clients cannot ask for truncation (LangChain's defaults send a long text whole).
var openaiSettings = [
  {
    name: 'EMBEDDINGS_OPENAI_TRUNCATE'
    value: openaiTruncate
  }
]

// OpenTelemetry (host.json "telemetryMode": "OpenTelemetry"; docs/operations.md). The Python
// worker configures the Azure Monitor distro (requirements.txt) before it imports the app, with
// APPLICATIONINSIGHTS_CONNECTION_STRING and the Entra ID APPLICATIONINSIGHTS_AUTHENTICATION_STRING
// above, and attaches the host's trace context to each invocation, so the app's span is a child
// of the host's request (where a worker attaches none to the function's thread, the app takes
// it from the invocation's context.trace_context). PYTHON_ENABLE_OPENTELEMETRY is deliberately not set: alone, current
// workers enable context propagation without creating the propagator, and every call fails.
var telemetrySettings = [
  {
    name: 'PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY'
    value: 'true'
  }
  // Only the app's own logger is exported (sanitised by embedding_core/telemetry.py).
  {
    name: 'PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME'
    value: 'embedding_core'
  }
  // Instrumentations of libraries the app does not use are not loaded (faster worker start);
  // urllib stays (Entra ID signing-key fetches show as dependencies).
  {
    name: 'OTEL_PYTHON_DISABLED_INSTRUMENTATIONS'
    value: 'azure_sdk,django,fastapi,flask,httpx,psycopg2,requests,urllib3'
  }
  // Application Insights drops exemplars; under the host's sampled trace context every
  // measurement would otherwise offer one (a cost on each request).
  {
    name: 'OTEL_METRICS_EXEMPLAR_FILTER'
    value: 'always_off'
  }
]

// The Functions host reads a request's whole body before the app sees the request (and so before
// it checks the caller), up to FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: 100 MB by default, on every
// route. The app's largest limit is the image route's 32 MiB (EMBEDDINGS_MAX_IMAGE_BODY_BYTES;
// 16 MiB on 512 MB instances, smallImageSettings); the host refuses more than that plus 1 MiB
// (413), as tools/local_host.py does, so that a caller without credentials cannot make an
// instance hold 100 MB per request. Raise both together.
var hostSettings = [
  {
    name: 'FUNCTIONS_REQUEST_BODY_SIZE_LIMIT'
    value: ((instanceMemoryMB == 512) ? '17825792' : '34603008')
  }
]

var appSettings = concat(hostStorageSettings, monitoringSettings, apiKeySettings, entraSettings, workerSettings, threadSettings, inferenceWorkerSettings, longInputSettings, smallImageSettings, openaiSettings, telemetrySettings, hostSettings)

// The site follows Microsoft's Flex samples: Azure-Samples/functions-quickstart-python-http-azd
// (infra/app/api.bicep) and Azure-Samples/azure-functions-flex-consumption-samples
// (IaC/bicep/main.bicep, IaC/armtemplate/azuredeploy.json). Deliberate differences:
// - A plain resource, not the AVM registry module (br/public:avm/res/web/site): checkov and
//   the tests scan this file offline.
// - No siteConfig.alwaysOn (the samples set alwaysOn: false): "properties.alwaysOn | Not
//   valid" in the Flex deprecation table. Likewise no ftpsState, use32BitWorkerProcess,
//   linuxFxVersion, functionAppScaleLimit ...: ARM refuses them on Flex with error 51021
//   ("The following list of ... site configuration properties (Site.SiteConfig.FtpsState,
//   Site.SiteConfig.Use32BitWorkerProcess, ...) for Flex Consumption sites is invalid").
//   FTP is off through the 'ftp' basicPublishingCredentialsPolicies below instead.
// - siteConfig keeps minTlsVersion, scmMinTlsVersion, http20Enabled and
//   remoteDebuggingEnabled (hardening the samples leave at defaults). None is in the
//   deprecation table or in any ARM 51021 rejection we know of.
// - App settings live in siteConfig.appSettings, where functions-infrastructure-as-code.md
//   (Flex Consumption, "Application configuration") and the ARM sample put them, so they
//   exist when the site is created (the AVM module writes a separate config/appsettings).
// - triggers.http.perInstanceConcurrency is set (the samples take the platform default, which
//   depends on instance memory): the app bounds its own in-process concurrency, and scale-out
//   should follow that bound (FunctionsScaleAndConcurrencyTriggersHttp in the 2024-04-01 schema).
// - maximumInstanceCount defaults to 40 and may go down to 1 (the samples use 100, minimum 40).
//   flex-consumption-plan.md (Considerations) has said both "The lowest maximum scale is
//   currently 40" and "currently 1"; the default of 40 is valid either way, and a value the
//   platform refuses fails the deployment. It bounds on-demand instances (always-ready ones
//   come on top); it is not a spending cap.
// - runtime python 3.12 by default (as the quickstart), 3.11 if asked for (pythonVersion; both are
//   tested: CI runs the suite on each). Azure Functions supports Python 3.10-3.14 GA, Python
//   3.11 until October 2027, 3.12 until October 2028, 3.13 until October 2029 (functions-versions.md,
//   2026-09-15; flex-consumption-plan.md's own table still lists 3.10-3.12). 3.12 is the newest
//   that keeps the Python worker the app is tested behind (azure_functions_worker; from 3.13 a
//   proxy worker runs the azure-functions-runtime library instead, whose 1.3.0 may start its
//   thread pool before PYTHON_THREADPOOL_THREAD_COUNT is loaded: docs/deploy.md). tests/ run on 3.12 in CI, and
//   requirements.lock is resolved on it (scripts/lock_requirements.py).
// - A user-assigned identity only, also used for Key Vault references (keyVaultReferenceIdentity);
//   the samples have no Key Vault.
resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17: Client certificates are not part of the Azure AI Model Inference contract; clients authenticate with API keys or Entra ID tokens.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales instances automatically (scale to zero); a fixed minimum instance count does not apply (always-ready instances are an optional cost).
  // checkov:skip=CKV_AZURE_213: Platform health check is not supported on Flex Consumption; the app exposes GET /health for external probes and the post-deploy smoke test.
  // checkov:skip=CKV_AZURE_222: This is a public pay-per-call API; every request is authenticated by the app (API key or Entra ID token).
  // checkov:skip=CKV_AZURE_78: siteConfig.ftpsState is refused on Flex Consumption ("properties.ftpsState | FTPS not supported", functions-app-settings.md, Flex Consumption plan deprecations; ARM error 51021). FTP publishing is disabled by the 'ftp' basicPublishingCredentialsPolicies resource below.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: planId
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        alwaysReady: (alwaysReadyHttpInstances > 0) ? [
          {
            name: 'http'
            instanceCount: alwaysReadyHttpInstances
          }
        ] : []
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      remoteDebuggingEnabled: false
      appSettings: appSettings
    }
  }
}

// Basic-auth (publishing profile) deployments are off; azd deploys with Entra ID.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
output uri string = 'https://${site.properties.defaultHostName}'
