// Key Vault holding the API key(s) served to the app through a Key Vault
// reference. RBAC authorization only (no access policies), soft delete and purge
// protection on.
//
// The secret holds EMBEDDINGS_API_KEYS as comma-separated `name:key` entries, e.g.
// "primary:<key>,alice:<key>" (the app also accepts plain keys and a JSON object
// {"name": "key"}). The vault is the source of truth: a deployment keeps every entry the
// secret already has, in order, and only appends `name:<new key>` for each name in
// apiKeyNames that has no entry yet. So re-provisioning never rotates, revokes or reorders a
// key, manual edits in the vault (a second key during a rotation, a removed caller) survive,
// and adding a name to apiKeyNames issues that caller a key. docs/deploy.md, "API keys".
//
// A deployment that is not given the secret's current value after keys were issued leaves the
// secret alone instead of replacing it with new keys (which would lock every caller out): azd
// reads the value back only when AZURE_KEY_VAULT_NAME is set, and a fresh azd environment (a
// new clone, a CI runner) does not have it; a manual deployment may omit it. ARM cannot test
// whether a secret exists, so the first deployment that writes keys marks the resource group with
// a tag (keysIssuedTag), which every later deployment reads through resourceGroup(). With no name
// and no keys to keep (Microsoft Entra ID only) nothing is written or marked.
param name string
param location string
param tags object

@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Name of the secret that holds EMBEDDINGS_API_KEYS (comma-separated name:key entries).')
param apiKeySecretName string

@secure()
@description('Current value of the secret (azd reads it back with secretOrRandomPassword). Empty, or an unnamed value shorter than minimumKeyLength (azd\'s first-run random password), means there are no keys yet.')
param currentApiKeys string = ''

@description('Comma-separated caller names that must have a key, e.g. "primary,alice" (letters, digits, ".", "_", "-"; 1-64 characters each). Blanks are ignored; none at all (e.g. ",") with no keys to keep: no API keys, Microsoft Entra ID only.')
param apiKeyNames string = 'primary'

@description('Resource ID of the Log Analytics workspace that receives the vault\'s audit log (every access, reads of the API-key secret included). Empty: none.')
param logAnalyticsWorkspaceId string = ''

// Randomness for new keys: a fresh random (version 4) GUID on every deployment, used only
// through guid() for names that get a key now. Secure, so it is neither logged nor kept in the
// deployment history; the Bicep linter allows newGuid() as a secure default
// (linter-rule-secure-parameter-default.md).
// checkov:skip=CKV_AZURE_131: newGuid() is not a hard-coded value; it is a new random GUID per deployment, the only source of randomness ARM offers (see the comment above).
@secure()
@description('Leave the default: fresh randomness for the keys this deployment issues.')
param apiKeyEntropy string = newGuid()

// Keys this template issues have 64 hex characters: two name-based GUIDs (ARM guid() is a
// version-5 UUID, SHA-1 over its arguments) of the fresh random GUID and the caller name, so
// each key carries the 122 random bits of apiKeyEntropy and differs per name. Deployed keys
// must have at least minimumKeyLength characters; the app refuses keys under 16.
var minimumKeyLength = 32

// An unnamed current value shorter than minimumKeyLength is not kept: it is azd's
// first-provision secretOrRandomPassword value (15 letters and digits, never a key the app
// accepts) or a key from an older template version made the same way.
var keptApiKeys = (contains(currentApiKeys, ':') || length(trim(currentApiKeys)) >= minimumKeyLength) ? trim(currentApiKeys) : ''

// The kept entries' names as the app reads them (trimmed, in lower case; '' for an entry
// without a name), without inner blanks. The app compares names case-insensitively (a second
// spelling's entry is refused), so a name already in the secret in another case is not added
// again; and names are compared without blanks and surrounding whitespace, so a name with an
// inner blank (which the app refuses) or a line break around it, in the secret or in
// apiKeyNames, is not appended again on every provision.
var keptNames = [for entry in split(keptApiKeys, ','): (contains(entry, ':')) ? toLower(replace(trim(first(split(entry, ':'))), ' ', '')) : '']

// The names asked for, compared the same way.
var wantedNames = [for keyName in split(apiKeyNames, ','): toLower(replace(trim(keyName), ' ', ''))]

// One ",<name>:<key>" per name that has no entry yet and is not asked for earlier in the list
// ("alice,Alice" issues one key), '' otherwise.
var apiKeyAdditions = [for (keyName, i) in split(apiKeyNames, ','): (empty(trim(keyName)) || contains(keptNames, wantedNames[i]) || contains(take(wantedNames, i), wantedNames[i])) ? '' : ',${trim(keyName)}:${replace(guid(apiKeyEntropy, trim(keyName), 'key-part-1'), '-', '')}${replace(guid(apiKeyEntropy, trim(keyName), 'key-part-2'), '-', '')}']

var allAdditions = join(apiKeyAdditions, '')

// A JSON-object value is the operator's own format: kept as it is, names are not added.
var apiKeysValue = startsWith(keptApiKeys, '{') ? keptApiKeys : (empty(keptApiKeys) ? skip(allAdditions, 1) : '${keptApiKeys}${allAdditions}')

// The resource group's tags as this deployment starts ({} when it has none).
var resourceGroupTags = union({ tags: {} }, resourceGroup()).tags

// Set on the resource group once this vault's secret has keys; named after the vault, so
// several environments can share a resource group.
var keysIssuedTag = 'embeddings-api-keys-${name}'
var keysIssuedBefore = contains(resourceGroupTags, keysIssuedTag)

// Keys were issued, but this deployment was not given the secret's value (or was given one
// it would not keep): the secret is left exactly as it is, and no name is added.
var leaveSecretAlone = keysIssuedBefore && empty(keptApiKeys)

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

// Who read or changed the API keys, and when: the vault's audit log (AuditEvent, category
// group 'audit') goes to the workspace, as Microsoft's Key Vault security baseline recommends
// (LT-3/LT-4). A few rows per instance start (the app's Key Vault reference) and per deployment;
// table AzureDiagnostics, ResourceProvider == "MICROSOFT.KEYVAULT" (docs/deploy.md).
resource auditLog 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

// Whether apiKeyNames names anyone. A deployment without a name (Microsoft Entra ID only) and
// without the marker, given no keys to keep, has no keys: it writes no secret, sets no marker and
// the app gets no EMBEDDINGS_API_KEYS (main.bicep). An empty secret would stay empty for good:
// azd reads an empty secret back as a random password (secretOrRandomPassword, "has empty
// value"), which the marker would make every later deployment leave alone, so a name added
// later would never get a key.
var keyNamesGiven = !empty(join(wantedNames, ''))

// The secret is written only when this deployment changes it: the first time for this vault (no
// marker yet, with a name or keys to keep) or when it adds a name. Rewriting an unchanged value
// would add a secret version on every provision, and a stale embeddingsApiKey (read before a key
// was removed in the vault, kept in a parameters file) would bring the removed key back. Without
// the marker it is written even when given a value that adds no name (e.g. an azd environment
// still naming another vault, or a group that lost its marker), so a vault never stays without
// its secret and the group is marked again.
var writeSecret = (!leaveSecretAlone) && (keysIssuedBefore ? ((!startsWith(keptApiKeys, '{')) && (!empty(allAdditions))) : (keyNamesGiven || (!empty(keptApiKeys))))

// Whether the secret holds keys once this deployment is done, as far as can be told without its
// value: the marker or a name. main.bicep adds "given keys to keep" (a bit of the secret's
// value, so not an output here) before it decides whether the app gets the Key Vault reference.
var hasApiKeys = keysIssuedBefore || keyNamesGiven

resource apiKeySecret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = if (writeSecret) {
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read the properties of a conditional (if) resource, and passes this check once the condition is removed.
  // checkov:skip=CKV_AZURE_41: An expiry date would make the Key Vault reference stop resolving and silently lock every client out; keys are rotated on demand (see docs/deploy.md, "Rotate a caller's key") instead of expiring.
  parent: vault
  name: apiKeySecretName
  properties: {
    value: apiKeysValue
    contentType: 'text/plain; comma-separated name:key API keys'
    attributes: {
      enabled: true
    }
  }
}

// The marker, after the secret has its keys (not for a deployment without keys). Tags written by
// a template replace the resource group's tags, so the existing ones are carried over.
resource keysIssuedMarker 'Microsoft.Resources/tags@2024-03-01' = if ((!keysIssuedBefore) && writeSecret) {
  name: 'default'
  properties: {
    tags: union(resourceGroupTags, { '${keysIssuedTag}': 'true' })
  }
  dependsOn: [
    apiKeySecret
  ]
}

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
// Versionless URI (the app always resolves the latest secret version), built from the vault,
// since the secret resource is not part of a deployment that leaves it alone.
output apiKeySecretUri string = '${vault.properties.vaultUri}secrets/${apiKeySecretName}'
// The marker or a name (see hasApiKeys above); main.bicep adds whether keys were given to keep.
output hasApiKeys bool = hasApiKeys
