// Log search alert rules on Application Insights: the 5xx rate, the 429 rate, the 401 rate and
// the p95 latency of the API. They query the `requests` table (classic schema: the rules are scoped to
// the Application Insights component; in the Log Analytics workspace the same rows are
// AppRequests). Those rows are written by the Functions host for every HTTP invocation
// (host.json telemetryMode OpenTelemetry; they may be sampled, so the rules count itemCount),
// so the rules also see failures outside the Python worker (crashes, time-outs). The worker's
// own telemetry (the per-request span in `dependencies`, usage in `customMetrics`) is for
// per-caller and per-deployment breakdowns: docs/operations.md.
param location string
param tags object

@description('Resource ID of the Application Insights component the rules query.')
param applicationInsightsId string

@description('Name prefix of the alert rules.')
param namePrefix string

@description('Alert when more than serverErrorThresholdPercent of the requests are answered 5xx.')
param serverErrorAlertEnabled bool = true

@minValue(0)
@maxValue(100)
param serverErrorThresholdPercent int = 1

@description('Alert when more than throttledThresholdPercent of the requests are answered 429.')
param throttledAlertEnabled bool = true

@minValue(0)
@maxValue(100)
param throttledThresholdPercent int = 5

@description('Alert when more than unauthorizedThresholdPercent of the requests are answered 401: keys that do not resolve (a Key Vault reference) refuse every caller, and no 5xx shows it.')
param unauthorizedAlertEnabled bool = true

@minValue(0)
@maxValue(100)
param unauthorizedThresholdPercent int = 50

@description('Alert when the p95 duration of successful requests exceeds latencyP95ThresholdMs.')
param latencyAlertEnabled bool = true

@minValue(1)
param latencyP95ThresholdMs int = 3000

@description('Rates and percentiles over fewer requests than this in a window do not alert.')
@minValue(1)
param minimumRequests int = 20

@description('Optional action group resource ID notified by the rules. Empty = the alerts only show in the portal.')
param actionGroupId string = ''

var window = 'PT15M'
var frequency = 'PT5M'
var actionGroups = empty(actionGroupId) ? [] : [
  actionGroupId
]
// GET /health is a probe, not a call: not counted. Each query returns one row for the window
// (windowSize bounds the time range), with its time column kept for the service's aggregation.
var apiRequests = 'requests | where not(url has "/health" or name has "health")'

var serverErrorQuery = '${apiRequests} | summarize timestamp = max(timestamp), total = sum(itemCount), failed = sumif(itemCount, toint(resultCode) >= 500) | where total >= ${minimumRequests} | project timestamp, ServerErrorPercent = 100.0 * failed / total'
var throttledQuery = '${apiRequests} | summarize timestamp = max(timestamp), total = sum(itemCount), throttled = sumif(itemCount, resultCode == "429") | where total >= ${minimumRequests} | project timestamp, ThrottledPercent = 100.0 * throttled / total'
var unauthorizedQuery = '${apiRequests} | summarize timestamp = max(timestamp), total = sum(itemCount), refused = sumif(itemCount, resultCode == "401") | where total >= ${minimumRequests} | project timestamp, UnauthorizedPercent = 100.0 * refused / total'
var latencyQuery = '${apiRequests} | where resultCode == "200" | summarize timestamp = max(timestamp), P95Ms = percentilew(duration, itemCount, 95), total = sum(itemCount) | where total >= ${minimumRequests} | project timestamp, P95Ms'

resource serverErrors 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-server-errors'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Embeddings API: 5xx rate'
    description: 'More than ${serverErrorThresholdPercent}% of the API requests in 15 minutes were answered 5xx.'
    enabled: serverErrorAlertEnabled
    severity: 1
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: frequency
    windowSize: window
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: serverErrorQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'ServerErrorPercent'
          operator: 'GreaterThan'
          threshold: serverErrorThresholdPercent
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource throttled 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-throttled'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Embeddings API: 429 rate'
    description: 'More than ${throttledThresholdPercent}% of the API requests in 15 minutes were answered 429 (inference queue full): raise the maximum instance count or lower per-instance concurrency, or ask the heaviest callers (docs/operations.md) to slow down.'
    enabled: throttledAlertEnabled
    severity: 2
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: frequency
    windowSize: window
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: throttledQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'ThrottledPercent'
          operator: 'GreaterThan'
          threshold: throttledThresholdPercent
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource unauthorized 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-unauthorized'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Embeddings API: 401 rate'
    description: 'More than ${unauthorizedThresholdPercent}% of the API requests in 15 minutes were answered 401. If GET /health answers 503, the app has no usable credential (an unresolved Key Vault reference, every key refused), and if it answers "degraded" no usable key while Entra ID tokens work: see traces starting with "configuration error" and docs/deploy.md. Otherwise callers send a wrong or retired key (traces: "api key refused").'
    enabled: unauthorizedAlertEnabled
    severity: 2
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: frequency
    windowSize: window
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: unauthorizedQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'UnauthorizedPercent'
          operator: 'GreaterThan'
          threshold: unauthorizedThresholdPercent
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource latencyP95 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-latency-p95'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Embeddings API: p95 latency'
    description: 'The p95 duration of successful API requests in 15 minutes exceeded ${latencyP95ThresholdMs} ms.'
    enabled: latencyAlertEnabled
    severity: 2
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: frequency
    windowSize: window
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: latencyQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'P95Ms'
          operator: 'GreaterThan'
          threshold: latencyP95ThresholdMs
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

output ruleNames array = [
  serverErrors.name
  throttled.name
  unauthorized.name
  latencyP95.name
]
