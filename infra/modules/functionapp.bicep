// Flex Consumption (FC1) plan + Linux Python 3.11 Function App.
// All secrets-free settings are plain app settings; the API key(s) come from Key
// Vault through a Key Vault reference resolved with the user-assigned identity.
param planName string
param name string
param location string
param tags object

@description('azd service name; must match the service in azure.yaml.')
param serviceName string = 'api'

@description('Resource ID of the user-assigned managed identity.')
param identityId string

@description('Client ID of the user-assigned managed identity.')
param identityClientId string

param storageAccountName string
param deploymentContainerUrl string
param applicationInsightsConnectionString string

@description('Versionless Key Vault secret URI holding EMBEDDINGS_API_KEYS.')
param apiKeySecretUri string

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 4

param zoneRedundant bool = false

// Entra ID (bearer token) settings, already resolved by main.bicep.
param entraTenantId string
param entraAudiences string
param entraRequiredRoles string
param entraAllowedClientIds string
param entraAuthority string

@description('EMBEDDINGS_MAX_CONCURRENCY; 0 = leave unset (app default).')
@minValue(0)
param embeddingsMaxConcurrency int = 0

@description('EMBEDDINGS_ORT_INTRA_OP_THREADS; 0 = leave unset (app default).')
@minValue(0)
param ortIntraOpThreads int = 0

var baseAppSettings = [
  // Identity-based host storage (no connection string, shared keys are disabled).
  {
    name: 'AzureWebJobsStorage__accountName'
    value: storageAccountName
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  // Application Insights with Entra ID ingestion (local auth disabled).
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: applicationInsightsConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }
  // API key(s): Key Vault reference, resolved with keyVaultReferenceIdentity.
  {
    name: 'EMBEDDINGS_API_KEYS'
    value: '@Microsoft.KeyVault(SecretUri=${apiKeySecretUri})'
  }
]

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

var concurrencySettings = (embeddingsMaxConcurrency > 0) ? [
  {
    name: 'EMBEDDINGS_MAX_CONCURRENCY'
    value: string(embeddingsMaxConcurrency)
  }
] : []

var threadSettings = (ortIntraOpThreads > 0) ? [
  {
    name: 'EMBEDDINGS_ORT_INTRA_OP_THREADS'
    value: string(ortIntraOpThreads)
  }
] : []

// OpenTelemetry (host.json "telemetryMode": "OpenTelemetry"; docs/operations.md). The Python
// worker configures the Azure Monitor distro (requirements.txt) before it imports the app, with
// APPLICATIONINSIGHTS_CONNECTION_STRING and the Entra ID APPLICATIONINSIGHTS_AUTHENTICATION_STRING
// above, and attaches the host's trace context to each invocation, so the app's span is a child
// of the host's request. PYTHON_ENABLE_OPENTELEMETRY is deliberately not set: alone, current
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

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Zone redundancy for Flex Consumption is region-dependent; it is exposed as the zoneRedundant parameter (default off) instead of being forced.
  name: planName
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

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17: Client certificates are not part of the Azure AI Model Inference contract; clients authenticate with API keys or Entra ID tokens.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales instances automatically (scale to zero); a fixed minimum instance count does not apply (always-ready instances are an optional cost).
  // checkov:skip=CKV_AZURE_213: Platform health check is not supported on Flex Consumption; the app exposes GET /health for external probes and the post-deploy smoke test.
  // checkov:skip=CKV_AZURE_222: This is a public pay-per-call API; every request is authenticated by the app (API key or Entra ID token).
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
    serverFarmId: plan.id
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
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
      appSettings: concat(baseAppSettings, entraSettings, concurrencySettings, threadSettings, telemetrySettings)
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
