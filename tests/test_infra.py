"""Static checks of the deployment assets (no Azure access, no Bicep CLI).

Every infra/**/*.bicep file is parsed with pycep-parser and the security-relevant
properties are asserted on the parsed structure. azure.yaml, main.parameters.json
and .funcignore are checked for consistency with the templates, and the
post-deploy smoke script is exercised against a loopback stub only.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from pycep import BicepParser  # pycep-parser, pinned in requirements-dev.txt

from conftest import git_repo

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
MODULES = INFRA / "modules"

EXPECTED_FILES = {
    "main.bicep",
    "modules/alerts.bicep",
    "modules/functionapp.bicep",
    "modules/identity.bicep",
    "modules/keyvault.bicep",
    "modules/monitoring.bicep",
    "modules/rbac.bicep",
    "modules/storage.bicep",
}

# Built-in Azure role definition IDs (same GUID in every tenant).
ROLE_IDS = {
    "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "keyVaultSecretsUser": "4633458b-17de-408a-b874-0445c86b69e6",
    "keyVaultSecretsOfficer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
}

ENTRA_SETTINGS = {
    "EMBEDDINGS_ENTRA_TENANT_ID": "entraTenantId",
    "EMBEDDINGS_ENTRA_AUDIENCES": "entraAudiences",
    "EMBEDDINGS_ENTRA_REQUIRED_ROLES": "entraRequiredRoles",
    "EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS": "entraAllowedClientIds",
    "EMBEDDINGS_ENTRA_AUTHORITY": "entraAuthority",
}

# Resource types without a location (child / extension resources) need no tags.
UNTAGGED_TYPES = {
    "Microsoft.Authorization/roleAssignments",
    "Microsoft.KeyVault/vaults/secrets",
    "Microsoft.Storage/storageAccounts/blobServices",
    "Microsoft.Storage/storageAccounts/blobServices/containers",
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies",
    "Microsoft.Resources/tags",  # it is the resource group's tags (keyvault.bicep's marker)
    "Microsoft.Insights/diagnosticSettings",  # an extension of the vault, no location
}

# Microsoft's table "Flex Consumption plan deprecations" (functions-app-settings.md, section
# of that name, ms.date 12/22/2025; learn.microsoft.com/azure/azure-functions/
# functions-app-settings#flex-consumption-plan-deprecations): "these site properties and
# application settings are deprecated and shouldn't be used when creating function app
# resources". ARM refuses several outright (error 51021, "The following list of ... site
# configuration properties (Site.SiteConfig.FtpsState, ...) for Flex Consumption sites is
# invalid"), so any of them in infra/ can fail the deploy.
FLEX_DEPRECATED_APP_SETTINGS = {
    "ENABLE_ORYX_BUILD": "replaced by the remoteBuild parameter when deploying",
    "FUNCTIONS_EXTENSION_VERSION": "set by the backend",
    "FUNCTIONS_WORKER_RUNTIME": "replaced by name in properties.functionAppConfig.runtime",
    "FUNCTIONS_WORKER_RUNTIME_VERSION": "replaced by version in properties.functionAppConfig.runtime",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY": "replaced by scale and concurrency's trigger section",
    "FUNCTIONS_WORKER_PROCESS_COUNT": "setting not valid",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED": "setting not valid",
    "SCM_DO_BUILD_DURING_DEPLOYMENT": "replaced by the remoteBuild parameter when deploying",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING": "replaced by functionAppConfig's deployment section",
    "WEBSITE_CONTENTOVERVNET": "not used for networking in Flex Consumption",
    "WEBSITE_CONTENTSHARE": "replaced by functionAppConfig's deployment section",
    "WEBSITE_DNS_SERVER": "DNS is inherited from the integrated virtual network",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT": "replaced by maximumInstanceCount in functionAppConfig.scaleAndConcurrency",
    "WEBSITE_NODE_DEFAULT_VERSION": "replaced by version in properties.functionAppConfig.runtime",
    "WEBSITE_RUN_FROM_PACKAGE": "not used for deployments in Flex Consumption",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION": "content share isn't used in Flex Consumption",
    "WEBSITE_VNET_ROUTE_ALL": "not used for networking in Flex Consumption",
    # flex-consumption-plan.md, "Considerations" (not in the table, same effect):
    "WEBSITE_TIME_ZONE": "time zones aren't currently supported on Flex Consumption",
    "TZ": "time zones aren't currently supported on Flex Consumption",
    "WEBSITE_LOAD_CERTIFICATES": "loading certificates isn't currently supported on Flex Consumption",
}

# The table's `properties.*` rows, as the ARM property names they denote in
# Microsoft.Web/sites@2024-04-01 (SiteProperties or SiteConfig in bicep-types-az);
# "isReserved" is the site's `reserved`. Checked at both levels, case-insensitively (ARM
# property names are case-insensitive).
FLEX_DEPRECATED_SITE_PROPERTIES = {
    "alwaysOn": "not valid",
    "containerSize": "renamed as instanceMemoryMB",
    "dnsConfiguration": "custom DNS servers of the virtual network are used automatically",
    "ftpsState": "FTPS not supported",
    "reserved": "isReserved: not valid",
    "isXenon": "not valid",
    "javaVersion": "replaced by version in properties.functionAppConfig.runtime",
    "linuxFxVersion": "replaced by properties.functionAppConfig.runtime",
    "netFrameworkVersion": "replaced by version in properties.functionAppConfig.runtime",
    "powerShellVersion": "replaced by version in properties.functionAppConfig.runtime",
    "functionAppScaleLimit": "renamed as maximumInstanceCount",
    "preWarmedInstanceCount": "renamed as alwaysReadyInstances",
    "use32BitWorkerProcess": "32-bit not supported",
    "vnetBackupRestoreEnabled": "not used for networking in Flex Consumption",
    "vnetContentShareEnabled": "not used for networking in Flex Consumption",
    "vnetImagePullEnabled": "not used for networking in Flex Consumption",
    "vnetRouteAllEnabled": "not used for networking in Flex Consumption",
    "windowsFxVersion": "not valid",
    # Not in the table, but named by ARM's 51021 rejection (quoted in
    # microsoft/azure-pipelines-tasks#21032 and Microsoft Q&A 2277522):
    "functionsRuntimeScaleMonitoringEnabled": "refused by ARM on Flex Consumption (error 51021)",
}


# The Bicep linter's no-hardcoded-env-urls defaults (linter-rule-no-hardcoded-environment-urls.md,
# ms.date 10/30/2025): hosts that differ per cloud, so a template naming them breaks in Azure
# Government, Azure operated by 21Vianet, etc. A host matches itself and its subdomains.
CLOUD_SPECIFIC_HOSTS = (
    "gallery.azure.com",
    "management.core.windows.net",
    "management.azure.com",
    "database.windows.net",
    "core.windows.net",
    "login.microsoftonline.com",
    "graph.windows.net",
    "trafficmanager.net",
    "datalake.azure.net",
    "azuredatalakestore.net",
    "azuredatalakeanalytics.net",
    "vault.azure.net",
    "api.loganalytics.io",
    "asazure.windows.net",
    "region.asazure.windows.net",
    "batch.core.windows.net",
)
CLOUD_SPECIFIC_HOSTS_EXCLUDED = ("schema.management.azure.com",)


# --------------------------------------------------------------------------- helpers


def bicep_files() -> List[Path]:
    return sorted(INFRA.rglob("*.bicep"))


_PARSED: Dict[Path, Dict[str, Any]] = {}


def parse(path: Path) -> Dict[str, Any]:
    if path not in _PARSED:
        result = BicepParser().parse(file_path=path)
        assert result, f"pycep could not parse {path}"
        _PARSED[path] = result
    return _PARSED[path]


def render(node: Any) -> str:
    """Render a pycep expression tree as compact text (for assertions/regexes)."""
    if node is None:
        return "null"
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, (int, float, str)):
        return str(node)
    if isinstance(node, list):
        return "[" + ", ".join(render(n) for n in node) + "]"
    if isinstance(node, dict):
        if set(node) == {"operator"}:
            op = node["operator"]
            operands = op.get("operands", {})
            if op["type"] == "property_accessor":
                return f"{render(operands['operand_1'])}.{render(operands['operand_2'])}"
            return f"{op['type']}(" + ", ".join(render(v) for v in operands.values()) + ")"
        if set(node) == {"function"}:
            fn = node["function"]
            args = [render(v) for v in (fn.get("parameters") or {}).values() if v is not None]
            return f"{fn['type']}(" + ", ".join(args) + ")"
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in node.items()) + "}"
    return repr(node)


def resources(path: Path) -> Dict[str, Dict[str, Any]]:
    return parse(path).get("resources", {})


def resource_config(res: Dict[str, Any]) -> Dict[str, Any]:
    """Resource body; conditional resources nest it under config.config."""
    config = res["config"]
    if "condition" in config and "config" in config:
        return config["config"]
    return config


def all_resources() -> Iterator[Tuple[Path, str, Dict[str, Any]]]:
    for path in bicep_files():
        for name, res in resources(path).items():
            yield path, name, res


def one_resource(path: Path, rtype: str) -> Dict[str, Any]:
    found = [r for r in resources(path).values() if r["type"] == rtype and not r["existing"]]
    assert len(found) == 1, f"expected one {rtype} in {path.name}, found {len(found)}"
    return resource_config(found[0])


def params(path: Path) -> Dict[str, Dict[str, Any]]:
    return parse(path).get("parameters", {})


def decorator_types(param: Dict[str, Any]) -> List[str]:
    return [d["type"] for d in param.get("decorators", [])]


def decorator(param: Dict[str, Any], kind: str) -> Any:
    for d in param.get("decorators", []):
        if d["type"] == kind:
            return d.get("argument")
    raise KeyError(kind)


def variable(path: Path, name: str) -> Any:
    return parse(path)["variables"][name]["value"]


def functionapp_settings() -> Dict[str, Any]:
    """All app settings the site can get: name -> value expression."""
    path = MODULES / "functionapp.bicep"
    site = one_resource(path, "Microsoft.Web/sites")
    # All settings are joined in one place: siteConfig.appSettings is the appSettings variable.
    assert site["properties"]["siteConfig"]["appSettings"] == "appSettings"
    combined = variable(path, "appSettings")
    assert combined["function"]["type"] == "concat"
    settings: Dict[str, Any] = {}
    for var_name in combined["function"]["parameters"].values():
        value = variable(path, var_name)
        if isinstance(value, dict) and "operator" in value:  # (cond) ? [..] : []
            assert value["operator"]["type"] == "conditional"
            value = value["operator"]["operands"]["true_value"]
        assert isinstance(value, list)
        for item in value:
            assert item["name"] not in settings, f"duplicate app setting {item['name']}"
            settings[item["name"]] = item["value"]
    return settings


# --------------------------------------------------------------------------- parsing


def test_every_bicep_file_parses_and_expected_files_exist():
    found = {p.relative_to(INFRA).as_posix() for p in bicep_files()}
    assert EXPECTED_FILES <= found
    for path in bicep_files():
        parsed = parse(path)
        assert parsed.get("resources") or parsed.get("modules"), path


def test_main_is_resource_group_scoped_and_uses_local_modules_only():
    parsed = parse(MAIN)
    assert parsed["globals"]["scope"]["value"] == "resourceGroup"
    assert not parsed.get("resources"), "main.bicep should only compose modules"
    for name, module in parsed["modules"].items():
        assert module["type"] == "local", f"{name}: registry modules cannot be scanned offline"
        assert (INFRA / module["detail"]["path"]).is_file(), name


def test_module_parameters_match_module_declarations():
    parsed = parse(MAIN)
    for name, module in parsed["modules"].items():
        module_path = INFRA / module["detail"]["path"]
        declared = params(module_path)
        passed = set(module["config"].get("params", {}))
        unknown = passed - set(declared)
        assert not unknown, f"module {name} gets undeclared params {unknown}"
        required = {p for p, spec in declared.items() if spec.get("default") is None}
        missing = required - passed
        assert not missing, f"module {name} misses required params {missing}"


def test_module_output_references_exist():
    parsed = parse(MAIN)
    module_files = {n: INFRA / m["detail"]["path"] for n, m in parsed["modules"].items()}
    text = render(parsed["modules"]) + render(parsed["outputs"])
    refs = set(re.findall(r"\b(\w+)\.outputs\.(\w+)", text))
    assert refs, "expected module output references"
    for module_name, output in refs:
        assert module_name in module_files, module_name
        outputs = parse(module_files[module_name]).get("outputs", {})
        assert output in outputs, f"{module_name}.outputs.{output} is not declared"


def test_api_versions_are_stable_and_current():
    minimum = {
        "Microsoft.Web/": "2023-12-01",  # functionAppConfig (Flex Consumption)
        "Microsoft.Storage/": "2023-01-01",
        "Microsoft.KeyVault/": "2023-07-01",
        "Microsoft.ManagedIdentity/": "2023-01-31",
        "Microsoft.OperationalInsights/": "2022-10-01",
        "Microsoft.Insights/components": "2020-02-02",
        "Microsoft.Insights/scheduledQueryRules": "2023-12-01",  # GA LogAlert (criteria.allOf)
        "Microsoft.Authorization/roleAssignments": "2022-04-01",
        "Microsoft.Resources/tags": "2024-03-01",
        "Microsoft.Insights/diagnosticSettings": "2021-05-01-preview",
    }
    # Types with no GA API version at all: the only one in Azure/bicep-types-az (1f896de).
    preview_only = {"Microsoft.Insights/diagnosticSettings": "2021-05-01-preview"}
    for path, name, res in all_resources():
        version = res["api_version"]
        if res["type"] in preview_only:
            assert version == preview_only[res["type"]], f"{path.name}:{name} uses {version}"
            continue
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", version), f"{path.name}:{name} uses {version}"
        floors = [v for prefix, v in minimum.items() if res["type"].startswith(prefix)]
        assert floors, f"{path.name}:{name}: no API version floor for {res['type']}"
        assert version >= floors[0], f"{path.name}:{name} uses old API version {version}"


# Azure's published resource schemas (the Bicep compiler's own type data), extracted for the
# resource types infra/ uses by scripts/extract_bicep_types.py from Azure/bicep-types-az.
BICEP_TYPES = json.loads((ROOT / "tests" / "data" / "bicep_types.json").read_text())
BICEP_REQUIRED, BICEP_READ_ONLY = 1, 2  # bicep-types TypePropertyFlags
BICEP_SYNTAX_KEYS = {"parent", "scope", "dependsOn"}  # Bicep keywords, not resource properties


def _is_expression(value: Any) -> bool:
    return isinstance(value, dict) and (set(value) in ({"operator"}, {"function"}) or "loop_type" in value)


class _SchemaCheck:
    """Walk a parsed resource body against its schema; collect what Azure would refuse."""

    def __init__(self, path: Path) -> None:
        doc = parse(path)
        self.params = doc.get("parameters", {})
        self.identifiers = set(self.params) | set(doc.get("variables", {})) | set(doc.get("resources", {}))
        self.identifiers |= set(doc.get("modules", {}))
        self.errors: List[str] = []
        self.root = ""

    def check_resource(self, body: Dict[str, Any], type_key: str, where: str) -> None:
        self.root = where
        self.check(body, type_key, where)

    def literal(self, value: Any) -> bool:
        """pycep renders identifiers and string literals alike; tell them apart."""
        if isinstance(value, str):
            return value not in self.identifiers and "${" not in value
        return isinstance(value, (bool, int, float))

    def allowed_values(self, value: Any) -> Optional[List[Any]]:
        """@allowed([...]) of a parameter used directly as the value, if any."""
        if isinstance(value, str) and value in self.params:
            for d in self.params[value].get("decorators", []):
                if d["type"] == "allowed":
                    return d["argument"]
        return None

    def fits(self, value: Any, type_key: str, where: str) -> bool:
        errors_before = len(self.errors)
        self.check(value, type_key, where)
        ok = len(self.errors) == errors_before
        del self.errors[errors_before:]
        return ok

    def check(self, value: Any, type_key: str, where: str) -> None:
        if _is_expression(value):
            return
        allowed = self.allowed_values(value)
        if allowed is not None:
            for option in allowed:
                self.check(option, type_key, f"{where} (@allowed {option!r} of {value})")
            return
        if not isinstance(value, (dict, list)) and not self.literal(value):
            return  # a parameter, variable or interpolation: its value is not known here
        t = BICEP_TYPES["types"][type_key]
        kind = t["kind"]
        if kind == "any":
            return
        if kind == "union":
            if not any(self.fits(value, element, where) for element in t["elements"]):
                options = [BICEP_TYPES["types"][e].get("value", BICEP_TYPES["types"][e]["kind"]) for e in t["elements"]]
                self.errors.append(f"{where}: {value!r} is none of {options}")
            return
        if kind == "literal":
            if value != t["value"]:
                self.errors.append(f"{where}: {value!r} is not {t['value']!r}")
            return
        if kind == "string":
            if not isinstance(value, str):
                self.errors.append(f"{where}: {value!r} is not a string")
            elif not t.get("minLength", 0) <= len(value) <= t.get("maxLength", len(value)):
                self.errors.append(f"{where}: length of {value!r} is out of bounds")
            elif "pattern" in t and not re.search(t["pattern"], value):
                self.errors.append(f"{where}: {value!r} does not match {t['pattern']}")
            return
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                self.errors.append(f"{where}: {value!r} is not an integer")
            elif not t.get("minValue", value) <= value <= t.get("maxValue", value):
                self.errors.append(f"{where}: {value} is out of [{t.get('minValue')}, {t.get('maxValue')}]")
            return
        if kind == "bool":
            if not isinstance(value, bool):
                self.errors.append(f"{where}: {value!r} is not a bool")
            return
        if kind == "array":
            if not isinstance(value, list):
                self.errors.append(f"{where}: expected an array")
                return
            for i, item in enumerate(value):
                self.check(item, t["item"], f"{where}[{i}]")
            return
        if kind in ("object", "discriminated"):
            if not isinstance(value, dict):
                self.errors.append(f"{where}: expected an object")
                return
            props = dict(t.get("properties", {}))
            additional = t.get("additional")
            if kind == "discriminated":
                props = dict(t["base"])
                chosen = value.get(t["discriminator"])
                if chosen not in t["elements"]:
                    self.errors.append(f"{where}.{t['discriminator']}: {chosen!r} is none of {sorted(t['elements'])}")
                    return
                element = BICEP_TYPES["types"][t["elements"][chosen]]
                props.update(element["properties"])
                additional = element.get("additional")
            for raw_key, item in value.items():
                key = raw_key.strip("'")
                if where == self.root and key in BICEP_SYNTAX_KEYS:
                    continue
                if key in props:
                    if props[key]["flags"] & BICEP_READ_ONLY:
                        self.errors.append(f"{where}.{key}: read-only in the schema")
                    else:
                        self.check(item, props[key]["type"], f"{where}.{key}")
                elif additional is not None:
                    self.check(item, additional, f"{where}.{key}")
                else:
                    near = [p for p in props if p.lower() == key.lower()]
                    self.errors.append(f"{where}.{key}: no such property" + (f" (did you mean {near[0]}?)" if near else ""))
            for key, prop in props.items():
                required = prop["flags"] & BICEP_REQUIRED and not prop["flags"] & BICEP_READ_ONLY
                if required and key not in {k.strip("'") for k in value}:
                    self.errors.append(f"{where}.{key}: required by the schema")
            return
        raise AssertionError(f"{where}: unknown schema kind {kind}")


def test_resources_match_azure_published_schemas():
    """Every resource's API version exists in Azure's published types (bicep-types-az), and
    every property written exists there, is writable, and literal values fit its enum and
    bounds: what ARM or the Bicep compiler would refuse."""
    checked = 0
    for path, name, res in all_resources():
        full_name = f"{res['type']}@{res['api_version']}"
        assert full_name in BICEP_TYPES["resources"], (
            f"{path.name}:{name}: {full_name} is not in tests/data/bicep_types.json "
            "(re-run scripts/extract_bicep_types.py; a version absent from bicep-types-az does not exist)"
        )
        if res["existing"]:
            continue
        resource_type = BICEP_TYPES["types"][BICEP_TYPES["resources"][full_name]]
        check = _SchemaCheck(path)
        check.check_resource(resource_config(res), resource_type["body"], f"{path.name}:{name}")
        assert not check.errors, "\n".join(check.errors)
        checked += 1
    assert checked >= 12


def test_schema_check_catches_what_azure_would_refuse():
    site_type = BICEP_TYPES["types"][BICEP_TYPES["resources"]["Microsoft.Web/sites@2024-04-01"]]["body"]
    check = _SchemaCheck(MODULES / "functionapp.bicep")
    site = json.loads(json.dumps(one_resource(MODULES / "functionapp.bicep", "Microsoft.Web/sites")))
    site["properties"]["functionAppConfig"]["scaleAndConcurrency"]["triggers"]["http"]["perInstanceConcurency"] = 4
    site["properties"]["functionAppConfig"]["runtime"]["name"] = 7
    site["properties"]["defaultHostName"] = "x"  # read-only
    site["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]["type"] = "UserAssigned"
    check.check_resource(site, site_type, "site")
    text = "\n".join(check.errors)
    assert "perInstanceConcurency: no such property" in text
    assert "runtime.name: 7 is none of" in text
    assert "defaultHostName: read-only" in text
    # 'UserAssigned' is accepted by the union's open string member, so it is not flagged:
    # the published type allows any string there.
    assert "authentication.type" not in text
    check.errors.clear()
    plan_type = BICEP_TYPES["types"][BICEP_TYPES["resources"]["Microsoft.Web/serverfarms@2024-04-01"]]["body"]
    plan = json.loads(json.dumps(one_resource(MODULES / "plan.bicep", "Microsoft.Web/serverfarms")))
    plan["properties"]["reserved"] = "true"
    del plan["location"]
    check.check_resource(plan, plan_type, "plan")
    assert any("reserved: 'true' is not a bool" in e for e in check.errors), check.errors
    assert any("location: required" in e for e in check.errors), check.errors


def test_tracked_resources_carry_azd_env_name_tag():
    main_tags = variable(MAIN, "tags")
    assert main_tags == {"'azd-env-name'": "environmentName"}
    for module in parse(MAIN)["modules"].values():
        if "tags" in params(INFRA / module["detail"]["path"]):
            assert module["config"]["params"].get("tags") == "tags"
    for path, name, res in all_resources():
        if res["existing"] or res["type"] in UNTAGGED_TYPES:
            continue
        tags = resource_config(res).get("tags")
        ok = tags == "tags" or (
            isinstance(tags, dict)
            and tags.get("function", {}).get("type") == "union"
            and tags["function"]["parameters"]["arg_1"] == "tags"
        )
        assert ok, f"{path.name}:{name} ({res['type']}) is not tagged with the azd tags"


# --------------------------------------------------------------------------- function app


def test_plan_is_flex_consumption_linux():
    plan = one_resource(MODULES / "plan.bicep", "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["kind"] == "functionapp"
    assert plan["properties"]["reserved"] is True
    # The one plan, and the site runs on it.
    assert [p.name for p, _, r in all_resources() if r["type"] == "Microsoft.Web/serverfarms"] == \
        ["plan.bicep"]
    site = one_resource(MODULES / "functionapp.bicep", "Microsoft.Web/sites")
    assert site["properties"]["serverFarmId"] == "planId"
    assert render(parse(MAIN)["modules"]["functionApp"]["config"]["params"]["planId"]) == \
        "plan.outputs.id"


def module_dependencies() -> Dict[str, set]:
    """main.bicep's modules, each with the modules ARM waits for before deploying it: its
    dependsOn, and every module whose outputs its parameters read (Bicep's implicit dependency)."""
    mods = parse(MAIN)["modules"]
    deps = {}
    for name, module in mods.items():
        read = render(module["config"].get("params", {}))
        deps[name] = set(module["config"].get("dependsOn") or []) | {
            other for other in mods if re.search(rf"\b{other}\.outputs\.", read)}
    return deps


def waits_for(deps: Dict[str, set], name: str) -> set:
    seen, todo = set(), [name]
    while todo:
        for dep in deps[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_a_region_that_refuses_the_plan_fails_before_the_key_vault_exists():
    """A region without Flex Consumption (or without zone-redundant Flex Consumption) refuses the
    plan. The vault has purge protection: once created, its name stays reserved for its retention
    period after `azd down`. So the plan comes first: it waits for no module, and the vault waits
    for it."""
    deps = module_dependencies()
    assert deps["rbac"] >= {"keyVault", "storage", "monitoring", "identity"}
    assert deps["plan"] == set()
    assert "plan" in waits_for(deps, "keyVault")
    assert "plan" in waits_for(deps, "functionApp")
    # The vault is the only purge-protected resource, and the plan module holds nothing else.
    protected = [p.name for p, _, r in all_resources()
                 if resource_config(r).get("properties", {}).get("enablePurgeProtection") is True]
    assert protected == ["keyvault.bicep"]
    assert [r["type"] for r in resources(MODULES / "plan.bicep").values()] == \
        ["Microsoft.Web/serverfarms"]


def test_function_app_is_hardened():
    path = MODULES / "functionapp.bicep"
    site = one_resource(path, "Microsoft.Web/sites")
    props = site["properties"]
    assert site["kind"] == "functionapp,linux"
    assert props["httpsOnly"] is True
    assert props["clientCertEnabled"] is False
    site_config = props["siteConfig"]
    assert site_config["minTlsVersion"] == "1.2"
    assert site_config["scmMinTlsVersion"] == "1.2"
    assert site_config["remoteDebuggingEnabled"] is False
    assert site_config["http20Enabled"] is True
    assert "cors" not in site_config
    # Only the user-assigned identity; Key Vault references resolve with it.
    assert site["identity"]["type"] == "UserAssigned"
    assert list(site["identity"]["userAssignedIdentities"]) == ["'${identityId}'"]
    assert props["keyVaultReferenceIdentity"] == "identityId"
    # azd finds the app by this tag; it must match the service in azure.yaml.
    assert site["tags"]["function"]["parameters"]["arg_2"] == {"'azd-service-name'": "serviceName"}
    assert params(path)["serviceName"]["default"] == "api"
    assert parse(MAIN)["modules"]["functionApp"]["config"]["params"]["serviceName"] == "api"
    # Basic-auth publishing is disabled for both SCM and FTP.
    policies = {
        resource_config(r)["name"]: resource_config(r)["properties"]["allow"]
        for r in resources(path).values()
        if r["type"] == "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    }
    assert policies == {"scm": False, "ftp": False}


def _keys_deep(node: Any) -> Iterator[str]:
    """Every object key in a parsed Bicep value, at any depth (loops and conditions included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key.strip("'")
            yield from _keys_deep(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys_deep(item)


def test_no_flex_deprecated_site_property_or_app_setting():
    path = MODULES / "functionapp.bicep"
    site = one_resource(path, "Microsoft.Web/sites")
    props = site["properties"]
    forbidden = {name.lower(): reason for name, reason in FLEX_DEPRECATED_SITE_PROPERTIES.items()}
    for level, body in (("properties", props), ("properties.siteConfig", props["siteConfig"])):
        for key in body:
            assert key.lower() not in forbidden, f"{level}.{key}: {forbidden[key.lower()]} on Flex Consumption"
    # Nor anywhere else in the site (e.g. a nested config object).
    for key in _keys_deep(site):
        assert key.lower() not in forbidden, f"{key}: {forbidden[key.lower()]} on Flex Consumption"
    # No sites/config child resource can bring them back either.
    for res in resources(path).values():
        assert not res["type"].startswith("Microsoft.Web/sites/config"), res["type"]
    settings = {name.upper() for name in functionapp_settings()}
    for name, reason in FLEX_DEPRECATED_APP_SETTINGS.items():
        assert name.upper() not in settings, f"app setting {name}: {reason} on Flex Consumption"
    # The same names must not hide in any string of the module either (e.g. a later
    # config resource or a settings object built with union()).
    text = path.read_text()
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    for name in FLEX_DEPRECATED_APP_SETTINGS:
        assert not re.search(rf"'{re.escape(name)}'", code, re.IGNORECASE), name


def test_function_app_config_flex_runtime_scale_and_deployment():
    path = MODULES / "functionapp.bicep"
    cfg = one_resource(path, "Microsoft.Web/sites")["properties"]["functionAppConfig"]
    assert cfg["runtime"] == {"name": "python", "version": "pythonVersion"}
    scale = cfg["scaleAndConcurrency"]
    assert scale["instanceMemoryMB"] == "instanceMemoryMB"
    assert scale["maximumInstanceCount"] == "maximumInstanceCount"
    assert scale["triggers"]["http"]["perInstanceConcurrency"] == "httpPerInstanceConcurrency"
    # Always-ready instances are a template parameter: each provision writes scaleAndConcurrency
    # whole, so a count set with the CLI would not last. 0 (the default): none, as the samples.
    assert render(scale["alwaysReady"]) == ("conditional(greater_than(alwaysReadyHttpInstances, 0), "
                                            "[{name: http, instanceCount: alwaysReadyHttpInstances}], [])")
    storage = cfg["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "deploymentContainerUrl"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    for file in (path, MAIN):
        p = params(file)
        assert p["instanceMemoryMB"]["default"] == 2048
        assert decorator(p["instanceMemoryMB"], "allowed") == [512, 2048, 4096]
        assert p["pythonVersion"]["default"] == "3.12"
        assert decorator(p["pythonVersion"], "allowed") == ["3.11", "3.12"]
        assert "maximumInstanceCount" in p and "httpPerInstanceConcurrency" in p
        assert decorator(p["maximumInstanceCount"], "max_value") <= 1000
        # main.bicep: 0 = by instance size (below); the module gets the value it resolves to
        assert decorator(p["httpPerInstanceConcurrency"], "min_value") == (0 if file == MAIN else 1)
        assert p["alwaysReadyHttpInstances"]["default"] == 0
        assert decorator(p["alwaysReadyHttpInstances"], "min_value") == 0
        # what the app accepts (a larger value would deploy and fail every request)
        from embedding_core.settings import MAX_INFERENCE_WORKERS
        assert decorator(p["inferenceWorkers"], "max_value") == MAX_INFERENCE_WORKERS
    # main.bicep hands its parameter on (else the module's default would silently win), and azd
    # fills it from AZURE_FUNCTION_PYTHON_VERSION.
    assert parse(MAIN)["modules"]["functionApp"]["config"]["params"]["pythonVersion"] == \
        "pythonVersion"
    azd = json.loads((MAIN.parent / "main.parameters.json").read_text())["parameters"]
    assert azd["pythonVersion"] == {"value": "${AZURE_FUNCTION_PYTHON_VERSION=3.12}"}


def test_http_concurrency_follows_the_instance_size_unless_set():
    """Flex gives 0.25 / 1 / 2 cores at 512 / 2048 / 4096 MB and keeps an explicit
    perInstanceConcurrency when the size changes: the default is 8 requests per core (at least
    2), the value main.bicep hands the module for the site's scale settings and thread pool."""
    from bicep_eval import Evaluator
    tree = parse(MAIN)
    assert params(MAIN)["httpPerInstanceConcurrency"]["default"] == 0
    got = {}
    for memory in (512, 2048, 4096):
        for asked in (0, 12):
            ev = Evaluator(tree, {"environmentName": "dev", "location": "swedencentral",
                                  "entraTenantId": "t", "instanceMemoryMB": memory,
                                  "httpPerInstanceConcurrency": asked},
                           resource_group={"name": "rg", "location": "swedencentral"})
            got[memory, asked] = ev.variable("effectiveHttpConcurrency")
    assert got == {(512, 0): 2, (2048, 0): 8, (4096, 0): 16,
                   (512, 12): 12, (2048, 12): 12, (4096, 12): 12}
    module = tree["modules"]["functionApp"]["config"]["params"]
    assert render(module["httpPerInstanceConcurrency"]) == "effectiveHttpConcurrency"
    assert '"${AZURE_FUNCTION_HTTP_CONCURRENCY=0}"' in (MAIN.parent / "main.parameters.json").read_text()


def test_long_inputs_stay_on_onnx_runtime_on_512_mb_instances():
    """OpenVINO (long inputs on AMX CPUs) holds ~225 MiB more and peaks ~250 MiB higher than a 512 MB
    instance has: the template turns it off there, in a value the app accepts, and leaves the
    app's default at the other sizes."""
    from bicep_eval import Evaluator
    from embedding_core.settings import Settings
    tree = parse(MODULES / "functionapp.bicep")
    required = {name: "x" for name, spec in tree["parameters"].items() if spec.get("default") is None}
    got = {}
    for memory in (512, 2048, 4096):
        ev = Evaluator(tree, dict(required, instanceMemoryMB=memory))
        got[memory] = {item["name"]: item["value"] for item in ev.variable("longInputSettings")}
    assert got == {512: {"EMBEDDINGS_LONG_INPUT_RUNTIME": "onnxruntime"}, 2048: {}, 4096: {}}
    assert Settings.from_env(got[512]).long_input_runtime == "onnxruntime"
    assert "EMBEDDINGS_LONG_INPUT_RUNTIME" in functionapp_settings()   # joined into appSettings


def test_app_settings_identity_based_and_key_vault_reference():
    settings = functionapp_settings()
    assert settings["AzureWebJobsStorage__blobServiceUri"] == "storageBlobServiceUri"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == "applicationInsightsConnectionString"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"
    assert settings["EMBEDDINGS_API_KEYS"] == "@Microsoft.KeyVault(SecretUri=${apiKeySecretUri})"
    # No connection strings or instrumentation keys (Flex-deprecated names have their own test).
    assert not {"AzureWebJobsStorage", "APPINSIGHTS_INSTRUMENTATIONKEY"} & set(settings)
    # The inference tuning a deployer may set with azd (docs/deploy.md); each is left unset
    # (the app's default) unless its parameter is above 0.
    assert render(settings["EMBEDDINGS_ORT_INTRA_OP_THREADS"]) == "string(ortIntraOpThreads)"
    assert render(settings["EMBEDDINGS_INFERENCE_WORKERS"]) == "string(inferenceWorkers)"
    for file in (MODULES / "functionapp.bicep", MAIN):
        p = params(file)
        for name in ("ortIntraOpThreads", "inferenceWorkers"):
            assert p[name]["default"] == 0 and decorator(p[name], "min_value") == 0, (file, name)
        # The OpenAI route's truncation: the values the app accepts; its default, the app's.
        assert p["openaiTruncate"]["default"] == "NONE"
        assert decorator(p["openaiTruncate"], "allowed") == ["NONE", "END", "START"]
    assert render(settings["EMBEDDINGS_OPENAI_TRUNCATE"]) == "openaiTruncate"
    from embedding_core.settings import Settings
    for value in ("NONE", "END", "START", "end"):
        assert Settings.from_env({"EMBEDDINGS_OPENAI_TRUNCATE": value}).openai_truncate == value.upper()
    # Concurrent requests meet in the app's inference queue: the worker's thread pool follows
    # the host's per-instance concurrency, and the retired EMBEDDINGS_MAX_CONCURRENCY is gone.
    assert render(settings["PYTHON_THREADPOOL_THREAD_COUNT"]) == "string(httpPerInstanceConcurrency)"
    assert "EMBEDDINGS_MAX_CONCURRENCY" not in settings
    for name, value in settings.items():
        assert "AccountKey=" not in render(value) and "InstrumentationKey=" not in render(value), name


def test_host_storage_uri_is_built_for_the_deploying_cloud():
    # AzureWebJobsStorage__accountName makes the host assume core.windows.net (public Azure
    # only); the service URI from environment().suffixes.storage works in every cloud.
    settings = functionapp_settings()
    assert "AzureWebJobsStorage__accountName" not in settings
    storage_path = MODULES / "storage.bicep"
    assert variable(storage_path, "blobServiceUri") == "https://${name}.blob.${environment().suffixes.storage}"
    outputs = parse(storage_path)["outputs"]
    assert outputs["blobServiceUri"]["value"] == "blobServiceUri"
    assert outputs["deploymentContainerUrl"]["value"] == "${blobServiceUri}/${deploymentContainer.name}"
    # <account>.blob.<suffix> is the account's endpoint only with the standard DNS endpoint
    # type (AzureDnsZone endpoints carry an extra zone label).
    account = one_resource(storage_path, "Microsoft.Storage/storageAccounts")
    assert account["properties"]["dnsEndpointType"] == "Standard"
    fa_params = parse(MAIN)["modules"]["functionApp"]["config"]["params"]
    assert render(fa_params["storageBlobServiceUri"]) == "storage.outputs.blobServiceUri"
    assert render(fa_params["deploymentContainerUrl"]) == "storage.outputs.deploymentContainerUrl"


STORAGE_SERVICE_ROLES = {
    "AzureWebJobsStorage__blobServiceUri": "storageBlobDataOwner",
    "AzureWebJobsStorage__queueServiceUri": "storageQueueDataContributor",
    "AzureWebJobsStorage__tableServiceUri": "storageTableDataContributor",
}


def test_host_storage_roles_match_the_services_the_host_uses():
    # A service URI without its data role fails at run time; a role without a use is excess
    # privilege. HTTP triggers only: the host needs blob (coordination, key store, the
    # deployment package) and nothing else.
    settings = functionapp_settings()
    used = {uri for uri in STORAGE_SERVICE_ROLES if uri in settings}
    assert used == {"AzureWebJobsStorage__blobServiceUri"}
    granted = set()
    for res in resources(MODULES / "rbac.bicep").values():
        if res["type"] == "Microsoft.Authorization/roleAssignments":
            cfg = resource_config(res)
            if cfg["scope"] == "storage" and cfg["properties"]["principalId"] == "appPrincipalId":
                granted.add(render(cfg["properties"]["roleDefinitionId"]).rsplit("roles.", 1)[1].rstrip(")"))
    assert granted == {STORAGE_SERVICE_ROLES[uri] for uri in used}


def _cloud_host_hits(text: str) -> List[str]:
    for excluded in CLOUD_SPECIFIC_HOSTS_EXCLUDED:
        text = re.sub(re.escape(excluded), "", text, flags=re.IGNORECASE)
    hits = []
    for host in CLOUD_SPECIFIC_HOSTS:
        # the host itself or any subdomain of it, not a longer name that merely ends with it
        if re.search(rf"(?<![a-z0-9-]){re.escape(host)}(?![a-z0-9-])", text, re.IGNORECASE):
            hits.append(host)
    return hits


def _without_comment_lines(text: str) -> str:
    """Drop whole-line // comments (which may name hosts to explain a choice); code and
    strings, where the linter looks, stay."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def test_no_hard_coded_cloud_urls_in_infra():
    files = bicep_files() + [INFRA / "main.parameters.json"]
    for path in files:
        hits = _cloud_host_hits(_without_comment_lines(path.read_text()))
        assert not hits, f"{path.relative_to(ROOT)} names cloud-specific host(s) {hits}; use environment()"
    # the check itself recognises what it must
    assert _cloud_host_hits("'https://login.microsoftonline.com'") == ["login.microsoftonline.com"]
    assert _cloud_host_hits("x.blob.core.windows.net/c") == ["core.windows.net"]
    assert _cloud_host_hits("https://kv.VAULT.azure.net/") == ["vault.azure.net"]
    assert _cloud_host_hits("https://schema.management.azure.com/schemas/x.json#") == []
    assert _cloud_host_hits(_without_comment_lines("  // core.windows.net\nvar x = 'https://a.vault.azure.net'")) == [
        "vault.azure.net"
    ]


def test_entra_authority_defaults_to_the_deploying_clouds_login_endpoint():
    main_params = params(MAIN)
    assert main_params["entraAuthority"]["default"] == ""
    assert render(variable(MAIN, "cloudLoginEndpoint")) == "environment().authentication.loginEndpoint"
    # loginEndpoint ends with '/'; it is dropped so "{authority}/{tenant}/v2.0" has no '//'.
    assert render(variable(MAIN, "cloudAuthority")) == (
        "conditional(ends_with(cloudLoginEndpoint, /), "
        "substring(cloudLoginEndpoint, 0, substract(length(cloudLoginEndpoint), 1)), cloudLoginEndpoint)"
    )
    assert render(variable(MAIN, "effectiveAuthority")) == (
        "conditional(empty(entraAuthority), cloudAuthority, entraAuthority)"
    )
    assert parse(MAIN)["modules"]["functionApp"]["config"]["params"]["entraAuthority"] == "effectiveAuthority"
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert values["entraAuthority"]["value"] == "${EMBEDDINGS_ENTRA_AUTHORITY}"


def test_key_vault_secret_uri_is_versionless():
    # Built from the vault (the secret is not part of a deployment that leaves it alone), as
    # the secret's own secretUri is: https://<vault>.vault.azure.net/secrets/<name>, no version.
    outputs = parse(MODULES / "keyvault.bicep")["outputs"]
    assert render(outputs["apiKeySecretUri"]["value"]) == \
        "${vault.properties.vaultUri}secrets/${apiKeySecretName}"
    main_fa = parse(MAIN)["modules"]["functionApp"]["config"]["params"]
    assert render(main_fa["apiKeySecretUri"]) == "keyVault.outputs.apiKeySecretUri"


def test_entra_settings_are_parameters_with_expected_defaults():
    settings = functionapp_settings()
    # The app turns Entra auth on when EMBEDDINGS_ENTRA_TENANT_ID is set and then requires
    # audiences, so the Entra settings are only written when audiences are configured.
    entra_var = variable(MODULES / "functionapp.bicep", "entraSettings")
    operands = entra_var["operator"]["operands"]
    assert render(operands["condition"]) == "not(empty(entraAudiences))"
    assert operands["false_value"] == []
    assert {item["name"] for item in operands["true_value"]} == set(ENTRA_SETTINGS)
    fa_params = parse(MAIN)["modules"]["functionApp"]["config"]["params"]
    main_params = params(MAIN)
    for setting, param in ENTRA_SETTINGS.items():
        assert settings[setting] == param, setting
        assert param in main_params, param
        assert main_params[param]["type"] == "string"
    assert render(main_params["entraTenantId"]["default"]) == "subscription().tenantId"
    for optional in ("entraAudiences", "entraRequiredRoles", "entraAllowedClientIds"):
        assert main_params[optional]["default"] == ""
    # Empty values coming from azd fall back to the documented defaults.
    assert render(variable(MAIN, "effectiveTenantId")) == (
        "conditional(empty(entraTenantId), subscription().tenantId, entraTenantId)"
    )
    assert fa_params["entraTenantId"] == "effectiveTenantId"
    assert fa_params["entraAuthority"] == "effectiveAuthority"
    for optional in ("entraAudiences", "entraRequiredRoles", "entraAllowedClientIds"):
        assert fa_params[optional] == optional


# --------------------------------------------------------------------------- storage / monitoring / key vault


def test_storage_account_is_entra_only_and_private():
    path = MODULES / "storage.bicep"
    storage = one_resource(path, "Microsoft.Storage/storageAccounts")
    props = storage["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["allowCrossTenantReplication"] is False
    assert props["defaultToOAuthAuthentication"] is True
    container = one_resource(path, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container["properties"]["publicAccess"] == "None"


def test_monitoring_requires_entra_auth():
    path = MODULES / "monitoring.bicep"
    appi = one_resource(path, "Microsoft.Insights/components")
    assert appi["properties"]["DisableLocalAuth"] is True
    assert render(appi["properties"]["WorkspaceResourceId"]) == "logAnalytics.id"
    workspace = one_resource(path, "Microsoft.OperationalInsights/workspaces")
    assert workspace["properties"]["features"]["disableLocalAuth"] is True


def test_key_vault_rbac_soft_delete_purge_protection():
    path = MODULES / "keyvault.bicep"
    vault = one_resource(path, "Microsoft.KeyVault/vaults")
    props = vault["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props
    secret = one_resource(path, "Microsoft.KeyVault/vaults/secrets")
    assert secret["name"] == "apiKeySecretName"
    assert secret["properties"]["value"] == "apiKeysValue"
    assert secret["properties"]["contentType"]


def test_the_vaults_audit_log_goes_to_the_workspace():
    """Reads of the API-key secret are recorded (AuditEvent), in the deployment's own workspace
    (Microsoft's Key Vault security baseline; review h_sec1 I2)."""
    path = MODULES / "keyvault.bicep"
    audit = one_resource(path, "Microsoft.Insights/diagnosticSettings")
    text = path.read_text()
    assert re.search(r"resource auditLog 'Microsoft\.Insights/diagnosticSettings@[^']+' = "
                     r"if \(!empty\(logAnalyticsWorkspaceId\)\) \{\n  name: '[^']+'\n  scope: vault\n",
                     text)
    assert audit["properties"]["workspaceId"] == "logAnalyticsWorkspaceId"
    assert audit["properties"]["logs"] == [{"categoryGroup": "audit", "enabled": True}]
    kv_module = parse(MAIN)["modules"]["keyVault"]["config"]["params"]
    assert render(kv_module["logAnalyticsWorkspaceId"]) == "monitoring.outputs.logAnalyticsId"
    outputs = parse(MODULES / "monitoring.bicep")["outputs"]
    assert render(outputs["logAnalyticsId"]["value"]) == "logAnalytics.id"


def _secret_derived(path: Path) -> set:
    """Secure parameters and every variable computed from one, transitively."""
    tree = parse(path)
    derived = {n for n, p in tree.get("parameters", {}).items() if "secure" in decorator_types(p)}
    variables = {n: json.dumps(v["value"]) for n, v in tree.get("variables", {}).items()}
    grew = True
    while grew:
        grew = False
        for name, text in variables.items():
            if name not in derived and any(re.search(rf"\b{re.escape(d)}\b", text) for d in derived):
                derived.add(name)
                grew = True
    return derived


def test_api_key_parameters_are_secure_and_never_output():
    main_params = params(MAIN)
    assert "secure" in decorator_types(main_params["embeddingsApiKey"])
    assert main_params["embeddingsApiKey"]["default"] in (None, "")
    kv_path = MODULES / "keyvault.bicep"
    kv_params = params(kv_path)
    for name in ("currentApiKeys", "apiKeyEntropy"):
        assert "secure" in decorator_types(kv_params[name]), name
    assert kv_params["currentApiKeys"]["default"] in (None, "")
    kv_module = parse(MAIN)["modules"]["keyVault"]["config"]["params"]
    assert kv_module["currentApiKeys"] == "embeddingsApiKey"
    assert kv_module["apiKeyNames"] == "apiKeyNames"
    assert "apiKeyEntropy" not in kv_module, "the entropy must stay the module's fresh newGuid()"
    assert {"keptApiKeys", "apiKeyAdditions", "apiKeysValue"} <= _secret_derived(kv_path)
    for path in bicep_files():
        secret = _secret_derived(path)
        for name, output in parse(path).get("outputs", {}).items():
            text = render(output["value"])
            assert not any(re.search(rf"\b{s}\b", text) for s in secret), f"{path.name} outputs {name}"
            assert "listKeys" not in text and "listSecrets" not in text
    # newGuid() only as the default of the secure entropy parameter (a value that changes on
    # every deployment must never be a key by itself), which is only ever used inside guid().
    for path in bicep_files():
        code = _without_comment_lines(path.read_text())
        if path == kv_path:
            assert re.findall(r"newGuid\(\)", code) == ["newGuid()"]
            assert re.search(r"param apiKeyEntropy string = newGuid\(\)", code)
            uses = re.findall(r"(\w+)\(apiKeyEntropy\b", code)
            assert uses and set(uses) == {"guid"}, uses
            assert len(re.findall(r"\bapiKeyEntropy\b", code)) == len(uses) + 1
        else:
            assert "newGuid" not in code, path.name


KV_PATH = MODULES / "keyvault.bicep"
KV_FIXED = {"name": "kv-test", "location": "swedencentral", "tags": {}, "apiKeySecretName": "embeddings-api-key"}
API_KEY_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def stored_api_keys(current: str, names: str = "primary", entropy: Optional[str] = None) -> str:
    """The value keyvault.bicep writes to the secret, evaluated offline (tests/bicep_eval.py)."""
    from bicep_eval import Evaluator

    values: Dict[str, Any] = dict(KV_FIXED, currentApiKeys=current, apiKeyNames=names)
    if entropy is not None:
        values["apiKeyEntropy"] = entropy
    return Evaluator(parse(KV_PATH), values).variable("apiKeysValue")


def entries(value: str) -> List[Tuple[str, str]]:
    out = []
    for entry in value.split(","):
        name, _, key = entry.strip().rpartition(":")
        out.append((name, key))
    return out


def test_first_provision_creates_a_named_key_of_at_least_32_characters():
    # azd's secretOrRandomPassword gives 15 letters and digits when the vault or secret does
    # not exist yet (azure-dev cli/azd/pkg/cmdsubst/secretOrRandomPassword.go: MinLower 5,
    # MinUpper 5, MinNumeric 5) - too short for the app, which refuses keys under 16.
    for first_value in ("aB3dE5gH7jK9mN1", ""):
        value = stored_api_keys(first_value)
        [(name, key)] = entries(value)
        assert name == "primary"
        assert re.fullmatch(r"[0-9a-f]{64}", key), key
        assert first_value == "" or first_value not in value


def test_reprovision_keeps_every_key_and_adds_only_missing_names():
    first = stored_api_keys("aB3dE5gH7jK9mN1")
    # azd reads the secret back; another deployment (new entropy) must not rotate anything.
    assert stored_api_keys(first) == first
    assert stored_api_keys(first, entropy="another-deployment") == first
    # A new caller gets a key; the existing entry is untouched and stays first.
    with_alice = stored_api_keys(first, "primary,alice")
    assert with_alice.startswith(first + ",alice:")
    (_, primary_key), (alice_name, alice_key) = entries(with_alice)
    assert alice_name == "alice" and len(alice_key) >= 32 and alice_key != primary_key
    # Blanks around names and empty names are ignored; names already present are not doubled.
    assert stored_api_keys(with_alice, " primary , , alice ,") == with_alice
    spaced = first.replace(",", ", ") + ", alice:" + "k" * 40
    assert stored_api_keys(spaced, "alice") == spaced
    # Manual edits in the vault survive: two keys for one caller during a rotation, a caller
    # removed from the secret but not from the names (re-issued with a NEW key, never the old).
    rotating = "primary:" + "a" * 40 + ",primary:" + "b" * 40
    assert stored_api_keys(rotating) == rotating
    reissued = stored_api_keys(first, "alice", entropy="later-deployment")
    assert entries(reissued)[1][1] != alice_key


def test_a_name_in_another_case_or_with_a_blank_is_not_added_again():
    """The app reads names case-insensitively (a second spelling's entry is refused), and a name
    with an inner blank is refused by the app: neither may be appended on every provision."""
    first = stored_api_keys("aB3dE5gH7jK9mN1", "primary,Alice")
    assert stored_api_keys(first, "primary,alice") == first
    assert stored_api_keys(first, "PRIMARY,ALICE") == first
    spaced = stored_api_keys(first, "primary,Alice,bob smith")
    assert spaced.startswith(first + ",bob smith:")
    assert stored_api_keys(spaced, "primary,Alice,bob smith") == spaced
    assert stored_api_keys(spaced, "primary,Alice,bob smith", entropy="again") == spaced
    # whitespace other than blanks, around a name given or kept (a name set from a file; a
    # value edited in the vault with line breaks), as the app strips it
    assert stored_api_keys(first, "primary,\talice\n") == first
    edited = first.replace(",", ",\n ")
    assert stored_api_keys(edited, "primary,alice", entropy="again") == edited
    # a name asked for twice in one list, in any spelling, gets one key
    doubled = stored_api_keys(first, "primary,Alice,bob,Bob, bob ")
    assert doubled.startswith(first + ",bob:") and doubled.count(",") == first.count(",") + 1


def secret_deployment(current: str, resource_group_tags: Optional[Dict[str, str]] = None,
                      names: str = "primary") -> Tuple[Optional[str], Optional[Dict[str, str]]]:
    """What a deployment of keyvault.bicep writes, evaluated offline: the secret's value (None:
    the secret is not deployed, so it keeps its value) and the resource group's tags (None:
    not written). ``resource_group_tags`` None: the group has no tags at all."""
    from bicep_eval import Evaluator

    group: Dict[str, Any] = {"name": "rg-test", "location": "swedencentral"}
    if resource_group_tags is not None:
        group["tags"] = resource_group_tags
    ev = Evaluator(parse(KV_PATH), dict(KV_FIXED, currentApiKeys=current, apiKeyNames=names),
                   resource_group=group)
    resources = parse(KV_PATH)["resources"]
    secret = ev.eval(resources["apiKeySecret"]["config"]["config"]["properties"]["value"], {}) \
        if ev.condition("apiKeySecret") else None
    marker = resources["keysIssuedMarker"]["config"]["config"]
    assert marker["name"] == "default" and "scope" not in marker  # the deployment's group
    assert marker["dependsOn"] == ["apiKeySecret"]    # marked once the secret has its keys
    tags = ev.eval(marker["properties"]["tags"], {}) if ev.condition("keysIssuedMarker") else None
    return secret, tags


AZD_PLACEHOLDER = "aB3dE5gH7jK9mN1"  # what secretOrRandomPassword gives without a vault name


def test_a_deployment_without_the_current_keys_never_replaces_them():
    # A fresh azd environment (a new clone, a CI runner) has no AZURE_KEY_VAULT_NAME, so
    # secretOrRandomPassword gets one argument and returns a random password instead of the
    # secret (azure-dev cli/azd/pkg/cmdsubst/secretOrRandomPassword.go: len(args) != 2); a
    # manual deployment may leave embeddingsApiKey out. Before, such a deployment replaced
    # every caller's key with a new primary key.
    first, tags = secret_deployment(AZD_PLACEHOLDER, {"azd-env-name": "dev"})
    [(name, key)] = entries(first)
    assert name == "primary" and len(key) == 64
    # The first deployment marks the resource group, keeping its tags.
    assert tags == {"azd-env-name": "dev", "embeddings-api-keys-kv-test": "true"}
    marked = tags
    for unknown in (AZD_PLACEHOLDER, "", "  "):
        for names in ("primary", "primary,alice"):
            assert secret_deployment(unknown, marked, names) == (None, None), (unknown, names)
    # With the current value (azd with AZURE_KEY_VAULT_NAME), it is kept and names are added,
    # and the marker is not written again; with no name to add, the secret is not written.
    assert secret_deployment(first, marked) == (None, None)
    with_alice, again = secret_deployment(first, marked, "primary,alice")
    assert with_alice.startswith(first + ",alice:") and again is None
    # A short unnamed key an operator put in the vault is no longer replaced either.
    assert secret_deployment("operator-key-20chars", marked) == (None, None)
    # Tag names are case-insensitive in Azure, and so is ARM's contains() on object keys.
    shouted = {"Embeddings-API-Keys-KV-Test": "true"}
    assert secret_deployment(AZD_PLACEHOLDER, shouted) == (None, None)


def test_a_deployment_that_adds_no_name_leaves_the_secret_as_it_is():
    # An operator removed a leaked key in the vault; a later deployment given the value read
    # before that (a parameters file, an old shell variable) must not write it back, and an
    # unchanged secret gets no new version (the vault's audit log shows real changes only).
    issued, tags = secret_deployment("", {}, "primary,alice")
    [(n1, _), (n2, _)] = entries(issued)
    assert (n1, n2) == ("primary", "alice")
    for names in ("primary,alice", "alice", "Alice, primary", "primary,,alice"):
        assert secret_deployment(issued, tags, names) == (None, None), names
    # A JSON-object value (the operator's own format, names never added) is never rewritten.
    as_json = '{"primary": "' + "c" * 40 + '"}'
    assert secret_deployment(as_json, tags, "primary,bob") == (None, None)
    # A vault's first deployment (no marker yet) writes the secret even when given a value
    # that adds no name (an azd environment that still names another vault), and marks it.
    assert secret_deployment(issued, {}, "primary,alice") == (issued, tags)
    # Adding a name writes the value it was given plus the new key: pass the current value.
    with_bob, _ = secret_deployment(issued, tags, "primary,alice,bob")
    assert with_bob.startswith(issued + ",bob:")


def test_the_marker_is_per_vault_and_only_the_first_deployment_issues_without_it():
    # A resource group with no tags at all (resourceGroup() has no "tags" then).
    value, tags = secret_deployment("", None)
    assert entries(value)[0][0] == "primary"
    assert tags == {"embeddings-api-keys-kv-test": "true"}
    # Another environment's vault in the same group does not count.
    other = {"embeddings-api-keys-kv-other": "true"}
    value, tags = secret_deployment(AZD_PLACEHOLDER, other)
    assert value is not None and tags == {**other, "embeddings-api-keys-kv-test": "true"}
    # Deployments of older template versions left no marker: upgrading behaves as before (a
    # short azd-generated key is replaced; see test_keys_from_older_templates_and_other_formats).
    value, tags = secret_deployment("Xy7Qw2Er5Ty8Ui1", {"azd-env-name": "dev"})
    assert value.startswith("primary:") and "Xy7Qw2Er5Ty8Ui1" not in value
    assert tags is not None


def has_api_keys(current: str, resource_group_tags: Optional[Dict[str, str]],
                 names: str) -> bool:
    """Whether the deployment gives the app its Key Vault reference (keyvault.bicep's
    hasApiKeys output, which main.bicep passes to the function app)."""
    from bicep_eval import Evaluator

    group: Dict[str, Any] = {"name": "rg-test", "location": "swedencentral"}
    if resource_group_tags is not None:
        group["tags"] = resource_group_tags
    tree = parse(KV_PATH)
    assert tree["outputs"]["hasApiKeys"]["value"] == "hasApiKeys"
    ev = Evaluator(tree, dict(KV_FIXED, currentApiKeys=current, apiKeyNames=names),
                   resource_group=group)
    return ev.variable("hasApiKeys")


def keys_given(current: str) -> bool:
    """main.bicep's apiKeysGiven: whether the deployment was given keys to keep."""
    from bicep_eval import Evaluator

    tree = parse(MAIN)
    required = {n: "x" for n, spec in tree["parameters"].items() if spec.get("default") is None}
    ev = Evaluator(tree, dict(required, embeddingsApiKey=current, entraTenantId="t"),
                   resource_group={"name": "rg-test", "location": "swedencentral"})
    return ev.variable("apiKeysGiven")


def app_gets_reference(current: str, resource_group_tags: Optional[Dict[str, str]],
                       names: str) -> bool:
    """Whether the function app is given EMBEDDINGS_API_KEYS (main.bicep's hasApiKeys)."""
    main_fa = parse(MAIN)["modules"]["functionApp"]["config"]["params"]
    assert render(main_fa["hasApiKeys"]) == "or(keyVault.outputs.hasApiKeys, apiKeysGiven)"
    return has_api_keys(current, resource_group_tags, names) or keys_given(current)


def test_main_tells_kept_keys_by_the_key_vault_module_rule():
    # main.bicep repeats keyvault.bicep's keptApiKeys rule (the module may not output a bit of
    # the secret's value): both must agree on what is a value to keep.
    from bicep_eval import Evaluator
    for current in ("", "  ", AZD_PLACEHOLDER, "Xy7Qw2Er5Ty8Ui1", "ops:" + "d" * 40, "a:b",
                    "0123456789abcdef" * 2, "0123456789abcdef" * 2 + "\n", " " * 40,
                    '{"primary": "' + "c" * 40 + '"}', "x" * 31):
        ev = Evaluator(parse(KV_PATH), dict(KV_FIXED, currentApiKeys=current, apiKeyNames=","),
                       resource_group={"name": "rg-test", "location": "swedencentral"})
        assert keys_given(current) == (ev.variable("keptApiKeys") != ""), repr(current)


def test_an_entra_only_deployment_has_no_secret_and_names_added_later_get_keys():
    # EMBEDDINGS_API_KEY_NAMES set to "" (or to commas and blanks): Microsoft Entra ID only.
    # Before, the first such deployment wrote an empty secret and marked the group; azd reads
    # an empty secret back as a random password ("has empty value"), so the marker made every
    # later deployment leave the secret alone and a name added later never got a key.
    group = {"azd-env-name": "dev"}
    for names in ("", ",", " , "):
        for current in (AZD_PLACEHOLDER, "", "  "):
            assert secret_deployment(current, group, names) == (None, None), (names, current)
            assert not app_gets_reference(current, group, names)
    # Adding a name later, from any azd environment: the key is issued and the group marked.
    value, tags = secret_deployment(AZD_PLACEHOLDER, group, "primary")
    [(name, key)] = entries(value)
    assert name == "primary" and len(key) == 64
    assert tags == {**group, "embeddings-api-keys-kv-test": "true"}
    assert app_gets_reference(AZD_PLACEHOLDER, group, "primary")
    # Once marked, a deployment without the value still gives the app its reference (the keys
    # stay in the vault), even with the names emptied.
    for names in ("primary", ""):
        assert secret_deployment(AZD_PLACEHOLDER, tags, names) == (None, None)
        assert app_gets_reference(AZD_PLACEHOLDER, tags, names)
    # Keys read back by azd from a group without the marker (it lost the tag; or a secret put
    # there by hand) are kept and served with no name listed, and the group marked again;
    # listing a name keeps them and adds its key.
    by_hand = "ops:" + "d" * 40
    marked = {**group, "embeddings-api-keys-kv-test": "true"}
    assert secret_deployment(by_hand, group, ",") == (by_hand, marked)
    assert app_gets_reference(by_hand, group, ",")
    value, tags = secret_deployment(by_hand, group, "primary")
    assert value.startswith(by_hand + ",primary:") and tags == marked


def test_the_app_gets_the_key_vault_reference_only_when_there_are_keys():
    from bicep_eval import Evaluator
    tree = parse(MODULES / "functionapp.bicep")
    assert tree["parameters"]["hasApiKeys"]["default"] is None   # main.bicep must pass it
    required = {name: "x" for name, spec in tree["parameters"].items() if spec.get("default") is None}
    got = {}
    for keys in (True, False):
        ev = Evaluator(tree, dict(required, hasApiKeys=keys, apiKeySecretUri="https://kv/secrets/s"))
        got[keys] = {item["name"]: item["value"] for item in ev.variable("apiKeySettings")}
    assert got == {True: {"EMBEDDINGS_API_KEYS": "@Microsoft.KeyVault(SecretUri=https://kv/secrets/s)"},
                   False: {}}
    main_fa = parse(MAIN)["modules"]["functionApp"]["config"]["params"]
    assert render(main_fa["hasApiKeys"]) == "or(keyVault.outputs.hasApiKeys, apiKeysGiven)"


def test_keys_from_older_templates_and_other_formats():
    # A plain key of 32+ characters (the old manual path used secrets.token_hex(32)) is kept
    # as an unnamed entry next to the new named one.
    legacy = "0123456789abcdef" * 4
    assert stored_api_keys(legacy).startswith(legacy + ",primary:")
    assert stored_api_keys(legacy + "," + legacy[::-1]).startswith(legacy + "," + legacy[::-1] + ",primary:")
    # A short unnamed key (what azd generated for older versions of this template) is
    # replaced: the app refuses keys under 16 characters anyway.
    replaced = stored_api_keys("Xy7Qw2Er5Ty8Ui1")
    assert "Xy7Qw2Er5Ty8Ui1" not in replaced and replaced.startswith("primary:")
    # The JSON-object form is the operator's own: kept byte for byte, names not added.
    as_json = '{"primary": "' + "c" * 40 + '"}'
    assert stored_api_keys(as_json, "primary,alice") == as_json


def test_generated_keys_are_distinct_per_name_and_deployment():
    names = ["primary", "alice", "bob.svc", "team_x-1"]
    value = stored_api_keys("", ",".join(names), entropy="e1")
    got = entries(value)
    assert [n for n, _ in got] == names
    keys = [k for _, k in got]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[0-9a-f]{64}", k) for k in keys)
    # No part of one caller's key reveals part of another's.
    halves = [k[:32] for k in keys] + [k[32:] for k in keys]
    assert len(set(halves)) == len(halves)
    assert stored_api_keys("", ",".join(names), entropy="e2") != value
    # Without an explicit entropy the module's newGuid() default gives a fresh key each time.
    assert stored_api_keys("") != stored_api_keys("")


def test_api_key_names_are_an_azd_setting_with_a_valid_default():
    for path in (MAIN, KV_PATH):
        default = params(path)["apiKeyNames"]["default"]
        assert default == "primary"
        assert all(API_KEY_NAME_RE.fullmatch(n) for n in default.split(","))
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert values["apiKeyNames"]["value"] == "${EMBEDDINGS_API_KEY_NAMES=primary}"


def test_role_assignments_use_built_in_role_ids_and_right_scopes():
    path = MODULES / "rbac.bicep"
    assert variable(path, "roles") == ROLE_IDS
    expected_app = {
        "storageBlobDataOwner": "storage",
        "monitoringMetricsPublisher": "applicationInsights",
        "keyVaultSecretsUser": "vault",
    }
    seen_app: Dict[str, str] = {}
    deployer: List[str] = []
    for res in resources(path).values():
        if res["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        cfg = resource_config(res)
        role_def = render(cfg["properties"]["roleDefinitionId"])
        match = re.fullmatch(
            r"subscription_resource_id\(Microsoft\.Authorization/roleDefinitions, roles\.(\w+)\)", role_def
        )
        assert match, role_def
        role = match.group(1)
        # Deterministic, idempotent assignment names.
        assert render(cfg["name"]).startswith(f"guid({cfg['scope']}.id, ")
        assert render(cfg["name"]).endswith(f"roles.{role})")
        principal = cfg["properties"]["principalId"]
        if principal == "appPrincipalId":
            assert cfg["properties"]["principalType"] == "ServicePrincipal"
            seen_app[role] = cfg["scope"]
        else:
            assert principal == "deployerPrincipalId"
            assert render(res["config"]["condition"]) == "not(empty(deployerPrincipalId))"
            deployer.append(role)
    assert seen_app == expected_app
    assert deployer == ["keyVaultSecretsOfficer"]
    rbac_params = parse(MAIN)["modules"]["rbac"]["config"]["params"]
    assert render(rbac_params["appPrincipalId"]) == "identity.outputs.principalId"
    assert rbac_params["deployerPrincipalId"] == "principalId"


def test_identity_client_id_feeds_storage_and_app_insights_settings():
    fa_params = parse(MAIN)["modules"]["functionApp"]["config"]["params"]
    assert render(fa_params["identityId"]) == "identity.outputs.id"
    assert render(fa_params["identityClientId"]) == "identity.outputs.clientId"
    assert "functionapp" in render(parse(MAIN)["modules"]["functionApp"]["config"]["name"])
    assert parse(MAIN)["modules"]["functionApp"]["config"]["dependsOn"] == ["rbac"]


def test_checkov_skips_are_inline_with_reasons():
    skip_re = re.compile(r"checkov:skip=([A-Z0-9_]+)(.*)")
    skips = []
    for path in bicep_files():
        for line in path.read_text().splitlines():
            m = skip_re.search(line)
            if m:
                assert line.lstrip().startswith("//"), line
                reason = m.group(2).lstrip(": ").strip()
                assert len(reason) >= 20, f"{path.name}: skip {m.group(1)} needs a reason"
                skips.append(m.group(1))
    assert skips and all(s.startswith("CKV_") for s in skips)


# --------------------------------------------------------------------------- telemetry and alerts


def _settings_by_size(variable_name: str) -> Dict[int, Dict[str, str]]:
    """The app settings of one list variable of functionapp.bicep, evaluated at each size."""
    from bicep_eval import Evaluator
    tree = parse(MODULES / "functionapp.bicep")
    required = {name: "x" for name, spec in tree["parameters"].items() if spec.get("default") is None}
    return {memory: {item["name"]: item["value"] for item in
                     Evaluator(tree, dict(required, instanceMemoryMB=memory)).variable(variable_name)}
            for memory in (512, 2048, 4096)}


def test_the_host_refuses_bodies_over_the_apps_largest_limit():
    """The host reads every body whole before the app checks the caller; its default limit is
    100 MB. Deployed, it is the local host's cap: the app's largest limit plus a margin, so the
    app still answers its own 413s (at every size: 512 MB instances lower the app's limit)."""
    from tools import local_host
    from embedding_core.settings import Settings
    hosts, images = _settings_by_size("hostSettings"), _settings_by_size("smallImageSettings")
    for memory, host in hosts.items():
        app = Settings.from_env(images[memory])
        limit = int(host["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"])
        assert limit == local_host.default_max_body_bytes(images[memory]) < local_host.FUNCTIONS_MAX_BODY
        assert limit == app.max_image_body_bytes + local_host.BODY_CAP_MARGIN, memory
    assert int(hosts[2048]["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"]) == \
        Settings.from_env({}).max_image_body_bytes + local_host.BODY_CAP_MARGIN
    assert "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT" in functionapp_settings()
    assert "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT" not in FLEX_DEPRECATED_APP_SETTINGS


def test_images_take_less_memory_on_512_mb_instances():
    """Two image requests at once (a 512 MB instance's HTTP concurrency) with the default limits
    peaked at ~580 MB and were killed in a 512 MiB cgroup; the template lowers the decode budget
    and the image body there, in values the app accepts, and keeps the defaults elsewhere."""
    from embedding_core import settings as settings_module
    from embedding_core.settings import Settings
    got = _settings_by_size("smallImageSettings")
    assert got[2048] == got[4096] == {}
    app = Settings.from_env(got[512])
    assert (app.max_image_decode_bytes, app.max_image_body_bytes) == (128 << 20, 16 << 20)
    assert app.max_image_decode_bytes < Settings().max_image_decode_bytes
    # ... the values the app itself takes where its cgroup shows less than 1,536 MiB
    assert (app.max_image_decode_bytes, app.max_image_body_bytes) == (
        settings_module.SMALL_MEMORY_IMAGE_DECODE_BYTES, settings_module.SMALL_MEMORY_IMAGE_BODY_BYTES)
    for name in got[512]:
        assert name in functionapp_settings()          # joined into appSettings


def test_opentelemetry_mode_and_worker_telemetry_settings():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    # In that mode the host loads no Application Insights SDK, so logging.applicationInsights
    # (samplingSettings, ...) would be inert and mislead a reader (azure-functions-host
    # OpenTelemetryConfigurationExtensions and its tests).
    assert "applicationInsights" not in host.get("logging", {})
    settings = functionapp_settings()
    # The worker configures the Azure Monitor distro and hands each invocation the host's trace
    # context; ingestion authenticates with the identity (Entra ID; local auth is disabled).
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"
    # Alone, PYTHON_ENABLE_OPENTELEMETRY makes current workers fail every invocation.
    assert "PYTHON_ENABLE_OPENTELEMETRY" not in settings
    # Only the package logger is hooked, and the app sanitises what reaches it.
    from embedding_core import telemetry
    assert settings["PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME"] == telemetry.EXPORTED_LOGGER
    disabled = settings["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"].split(",")
    assert "urllib" not in disabled and {"requests", "django", "flask"} <= set(disabled)
    assert settings["OTEL_METRICS_EXEMPLAR_FILTER"] == "always_off"
    requirements = (ROOT / "requirements.txt").read_text().split()
    assert any(r.startswith("azure-monitor-opentelemetry==") for r in requirements)


ALERTS = {
    # resource: (enabled param, threshold param, measure column, main.bicep params)
    "serverErrors": ("serverErrorAlertEnabled", "serverErrorThresholdPercent", "ServerErrorPercent",
                     ("alertServerErrorsEnabled", "alertServerErrorPercent")),
    "throttled": ("throttledAlertEnabled", "throttledThresholdPercent", "ThrottledPercent",
                  ("alertThrottledEnabled", "alertThrottledPercent")),
    "unauthorized": ("unauthorizedAlertEnabled", "unauthorizedThresholdPercent",
                     "UnauthorizedPercent", ("alertUnauthorizedEnabled", "alertUnauthorizedPercent")),
    "latencyP95": ("latencyAlertEnabled", "latencyP95ThresholdMs", "P95Ms",
                   ("alertLatencyEnabled", "alertLatencyP95Ms")),
}


def alert_query(name: str) -> str:
    """The rule's KQL with the module's variables and parameters substituted."""
    path = MODULES / "alerts.bicep"
    rule = resources(path)[name]["config"]
    query = variable(path, rule["properties"]["criteria"]["allOf"][0]["query"])
    values = {"apiRequests": variable(path, "apiRequests"), "minimumRequests": "20"}
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], query)


def test_alert_rules_query_the_requests_table_and_can_each_be_turned_off():
    path = MODULES / "alerts.bicep"
    rules = {n: r for n, r in resources(path).items()
             if r["type"] == "Microsoft.Insights/scheduledQueryRules"}
    assert set(rules) == set(ALERTS)
    module_params = params(path)
    for name, (enabled, threshold, column, _) in ALERTS.items():
        cfg = rules[name]["config"]
        props = cfg["properties"]
        assert cfg["kind"] == "LogAlert"
        assert props["enabled"] == enabled and module_params[enabled]["default"] is True
        assert props["scopes"] == ["applicationInsightsId"]      # classic schema: `requests`
        assert props["autoMitigate"] is True
        assert props["actions"] == {"actionGroups": "actionGroups"}
        (criterion,) = props["criteria"]["allOf"]
        assert criterion["threshold"] == threshold and criterion["operator"] == "GreaterThan"
        assert criterion["metricMeasureColumn"] == column
        query = alert_query(name)
        assert query.startswith("requests | where not(url has \"/health\"")
        assert f"| project timestamp, {column} " in query + " " and "where total >= 20" in query
        assert "summarize timestamp = max(timestamp)," in query     # one row, time column kept
        assert "sum(itemCount)" in query                          # sampled rows count in full
    assert "toint(resultCode) >= 500" in alert_query("serverErrors")
    assert 'resultCode == "429"' in alert_query("throttled")
    assert 'resultCode == "401"' in alert_query("unauthorized")
    # weighted as the totals are: a sampled row stands for itemCount requests
    assert "percentilew(duration, itemCount, 95)" in alert_query("latencyP95")
    assert render(variable(path, "actionGroups")) == \
        "conditional(empty(actionGroupId), [], [actionGroupId])"
    assert (variable(path, "window"), variable(path, "frequency")) == ("PT15M", "PT5M")


def test_alert_parameters_are_wired_from_main_and_azd():
    module = parse(MAIN)["modules"]["alerts"]["config"]["params"]
    assert render(module["applicationInsightsId"]) == "monitoring.outputs.applicationInsightsId"
    main_params = params(MAIN)
    module_params = params(MODULES / "alerts.bicep")
    for _, (enabled, threshold, _, (main_enabled, main_threshold)) in ALERTS.items():
        assert module[enabled] == main_enabled and module[threshold] == main_threshold
        assert main_params[main_enabled]["type"] == "bool"
        assert main_params[main_enabled]["default"] is True
        assert main_params[main_threshold]["default"] == module_params[threshold]["default"]
    assert module["actionGroupId"] == "alertActionGroupId"
    assert main_params["alertActionGroupId"]["default"] == ""
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    for name in ("alertServerErrorsEnabled", "alertThrottledEnabled", "alertUnauthorizedEnabled",
                 "alertLatencyEnabled"):
        assert re.fullmatch(r"\$\{EMBEDDINGS_ALERT_\w+=true\}", azd[name]["value"]), name


# --------------------------------------------------------------------------- azd files


def load_simple_yaml(text: str) -> Dict[str, Any]:
    """Tiny reader for the block-mapping subset azure.yaml uses (no lists, no flow)."""
    root: Dict[str, Any] = {}
    stack: List[Tuple[int, Dict[str, Any]]] = [(-1, root)]
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, sep, value = line.strip().partition(":")
        assert sep and not key.startswith("-"), f"unsupported YAML line: {raw!r}"
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        value = value.strip().strip("'\"")
        if value:
            parent[key] = value
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))
    return root


def test_azure_yaml_service_matches_infra():
    doc = load_simple_yaml((ROOT / "azure.yaml").read_text())
    assert doc["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert set(doc["services"]) == {"api"}
    api = doc["services"]["api"]
    assert set(api["hooks"]) == {"prepackage"}        # --record-build (the post-deploy check)
    assert {k: v for k, v in api.items() if k != "hooks"} == {
        "project": ".", "language": "python", "host": "function"}
    # .funcignore is honoured from azd 1.18.0 (Azure/azure-dev#5383); the pwsh hooks fall back
    # to Windows PowerShell 5.1 from 1.18.2 (Azure/azure-dev#5570)
    assert doc["requiredVersions"] == {"azd": ">= 1.18.2"}
    assert parse(MAIN)["modules"]["functionApp"]["config"]["params"]["serviceName"] == "api"


def test_main_parameters_json_matches_main_bicep():
    doc = json.loads((INFRA / "main.parameters.json").read_text())
    values = {k: v["value"] for k, v in doc["parameters"].items()}
    declared = params(MAIN)
    assert set(values) <= set(declared), set(values) - set(declared)
    required = {n for n, p in declared.items() if p.get("default") is None}
    assert required <= set(values), required - set(values)
    assert values["environmentName"] == "${AZURE_ENV_NAME}"
    assert values["location"] == "${AZURE_LOCATION}"
    assert values["principalId"] == "${AZURE_PRINCIPAL_ID}"
    # The API key is generated once and read back from Key Vault afterwards.
    secret_name = variable(MAIN, "apiKeySecretName")
    assert values["embeddingsApiKey"] == f"$(secretOrRandomPassword ${{AZURE_KEY_VAULT_NAME}} {secret_name})"
    outputs = parse(MAIN)["outputs"]
    assert render(outputs["AZURE_KEY_VAULT_NAME"]["value"]) == "keyVault.outputs.name"
    assert outputs["EMBEDDINGS_API_KEY_SECRET_NAME"]["value"] == "apiKeySecretName"
    for name, value in values.items():
        assert isinstance(value, str) and re.search(r"\$[({]", value), f"{name} is hard-coded"
        assert "newGuid" not in value
        # ${VAR=default} defaults must agree with the Bicep defaults.
        m = re.fullmatch(r"\$\{\w+=(.*)\}", value)
        if m:
            default = declared[name]["default"]
            if isinstance(default, bool):
                default = "true" if default else "false"
            assert m.group(1) == str(default), name


def test_outputs_expose_endpoint_and_resource_names():
    outputs = parse(MAIN)["outputs"]
    for name in (
        "AZURE_FUNCTION_URL",
        "AZURE_FUNCTION_NAME",
        "AZURE_KEY_VAULT_NAME",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "APPLICATIONINSIGHTS_NAME",
        "AZURE_RESOURCE_GROUP",
    ):
        assert name in outputs, name
    assert render(outputs["AZURE_FUNCTION_URL"]["value"]) == "functionApp.outputs.uri"
    fa_outputs = parse(MODULES / "functionapp.bicep")["outputs"]
    assert fa_outputs["uri"]["value"] == "https://${site.properties.defaultHostName}"


# --------------------------------------------------------------------------- .funcignore


def funcignore_patterns() -> List[str]:
    lines = (ROOT / ".funcignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored(rel_path: str, patterns: List[str]) -> bool:
    """gitignore-style match (the subset .funcignore uses) for a file path."""
    parts = rel_path.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        dir_only = pat.endswith("/")
        pat = pat.rstrip("/")
        anchored = "/" in pat
        pat = pat.lstrip("/")
        # Candidate paths: every directory prefix, plus the file itself.
        candidates = []
        for i in range(1, len(parts) + 1):
            is_dir = i < len(parts)
            if dir_only and not is_dir:
                continue
            candidates.append("/".join(parts[:i]) if anchored else parts[i - 1])
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            result = not negate
    return result


@pytest.mark.parametrize(
    "path",
    [
        "tests/test_infra.py",
        "tests/conftest.py",
        "docs/deploy.md",
        "bench/run.py",
        "scripts/smoke_deployed.py",
        "infra/main.bicep",
        "infra/modules/storage.bicep",
        "tools/checkov.sh",
        ".venv/lib/python3.11/site-packages/x.py",
        ".venv-checkov/bin/checkov",
        ".venv-tools/bin/python",
        ".git/config",
        ".github/workflows/ci.yml",
        ".gitignore",
        ".azure/dev/.env",
        ".ci/run",
        "local.settings.json",
        "requirements-dev.txt",
        "requirements-serve.txt",
        "requirements-checkov.txt",
        "requirements-tools.txt",
        "requirements-clients.txt",
        "requirements-clients.lock",
        "local.settings.json.example",
        "tools/local_host.py",
        "build/wheels/scipy-1.9.3-cp311-cp311-manylinux2014_x86_64.whl",
        "azure.yaml",
        "Makefile",
        "README.md",
        "embedding_core/__pycache__/backends.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".hypothesis/examples/0a1b2c3d/4e5f",   # make test's hypothesis database
        "embeddings-api_env/lib/python3.11/site-packages/numpy/__init__.py",   # azd restore's
        "main_env/bin/python",
    ],
)
def test_funcignore_excludes_dev_files(path):
    assert ignored(path, funcignore_patterns()), path


@pytest.mark.parametrize(
    "path",
    [
        "function_app.py",
        "host.json",
        "requirements.txt",
        "requirements.lock",
        "embedding_core/__init__.py",
        "embedding_core/backends.py",
        "embedding_core/registry.json",
        "embedding_core/models/all-MiniLM-L6-v2/tokenizer.json",
        "embedding_core/models/all-MiniLM-L6-v2/README.md",
    ],
)
def test_funcignore_keeps_runtime_files(path):
    assert not ignored(path, funcignore_patterns()), path


def _lock_pins() -> dict[str, str]:
    """requirements.lock's pins that apply to this Python: normalised name -> version."""
    from packaging.requirements import Requirement
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                (spec,) = req.specifier
                assert spec.operator == "==", line
                pins[canonical(req.name)] = spec.version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_package_the_app_installs_is_pinned_by_the_lock():
    """requirements.txt reads requirements.lock as constraints, so Azure's remote build installs
    the versions tested here. Walks what requirements.txt pulls in on this Python (extras and
    markers followed) through the installed packages' metadata: each must be pinned, at the
    version installed (a change to requirements.txt without re-running
    scripts/lock_requirements.py fails here)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert "-c requirements.lock" in lines
    pins = _lock_pins()
    todo = [Requirement(line) for line in lines
            if line.strip() and not line.startswith(("#", "-"))]
    seen: dict[str, str] = {}
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonical(req.name)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name}, required by the app, is not installed")
        if name not in seen:
            seen[name] = dist.version
            todo.extend(
                r for r in map(Requirement, dist.requires or [])
                if r.marker is None or r.marker.evaluate({"extra": ""}))
        for extra in req.extras:    # PyJWT[crypto]: the extra's requirements too
            todo.extend(r for r in map(Requirement, dist.requires or [])
                        if r.marker is not None and r.marker.evaluate({"extra": extra}))
    assert len(seen) > 50     # the app's ~75 packages, not a walk that stopped early
    unpinned = sorted(set(seen) - set(pins))
    assert not unpinned, f"not pinned by requirements.lock: {unpinned}"
    wrong = {n: (seen[n], pins[n]) for n in seen if seen[n] != pins[n]}
    assert not wrong, f"installed, locked: {wrong}"


def test_the_lock_and_ci_cover_each_python_azure_may_run():
    """infra/ deploys one of the Python versions its pythonVersion parameter allows:
    requirements.lock must have been resolved on each (its header names the Pythons
    scripts/lock_requirements.py froze), and CI runs the suite on the default, 3.12 (the
    machine's own Python, 3.11, runs `make test`)."""
    p = params(MODULES / "functionapp.bicep")["pythonVersion"]
    header = " ".join(line for line in (ROOT / "requirements.lock").read_text().splitlines()
                      if line.startswith("#"))
    resolved = re.search(r"alone on Python ([0-9., ]+)\)", header)
    assert resolved, header
    versions = [v.strip() for v in resolved.group(1).split(",")]
    for version in decorator(p, "allowed"):
        assert version in versions, (version, header)
    ci = (ROOT / ".ci" / "run").read_text()
    assert p["default"] == "3.12"
    assert "python3.12" in ci and ".venv-py312/bin/python -m pytest" in ci


def _lock_script():
    spec = importlib.util.spec_from_file_location(
        "lock_requirements", ROOT / "scripts" / "lock_requirements.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _pins_for(lines: list[str], version: str) -> dict[str, str]:
    """The pins of lock lines that apply on Python ``version``; a package pinned twice fails."""
    from packaging.requirements import Requirement
    pins: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"python_version": version}):
            assert req.name not in pins, (version, line)
            (spec,) = req.specifier
            pins[req.name] = spec.version
    return pins


def test_the_lock_script_gives_each_python_its_own_pins():
    """scripts/lock_requirements.py's markers: each Python resolved gets exactly its own freeze,
    older Pythons the lowest's and newer ones the highest's; alike pins share one line."""
    frozen = {(3, 11): {"same": "1", "new": "1", "mid": "1", "odd": "1"},
              (3, 12): {"same": "1", "new": "1", "mid": "2", "odd": "2", "only": "1"},
              (3, 13): {"same": "1", "new": "2", "mid": "2", "odd": "1"}}
    lines = _lock_script().lock_lines(frozen)
    assert lines == [
        'mid==1; python_version < "3.12"',
        'mid==2; python_version >= "3.12"',
        'new==1; python_version < "3.13"',
        'new==2; python_version >= "3.13"',
        'odd==1; python_version < "3.12"',
        'odd==2; python_version >= "3.12" and python_version < "3.13"',
        'odd==1; python_version >= "3.13"',
        'only==1; python_version >= "3.12" and python_version < "3.13"',
        "same==1",
    ]
    for (major, minor), pins in frozen.items():
        assert _pins_for(lines, f"{major}.{minor}") == pins
    assert _pins_for(lines, "3.10") == frozen[(3, 11)]
    assert _pins_for(lines, "3.14") == frozen[(3, 13)]


def test_the_deploy_guide_names_what_the_lock_pins_differently_on_311_and_312():
    """docs/deploy.md's "Python version" says what requirements.lock pins on 3.11 and on 3.12,
    between which pythonVersion chooses: the sentence naming the lock names every package pinned
    differently on the two (it said "the same package versions for both" while numpy was 2.4.6
    on one and 2.5.5 on the other)."""
    lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    old, new = _pins_for(lines, "3.11"), _pins_for(lines, "3.12")
    differ = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
    section = (ROOT / "docs" / "deploy.md").read_text().split("## Python version", 1)[1]
    sentence = next(s for s in re.split(r"(?<=\.)\s", section.strip().split("\n\n", 1)[0])
                    if "`requirements.lock`" in s)
    for name in differ:
        assert f"{name} {old.get(name)}" in sentence and f"{name} {new.get(name)}" in sentence, \
            (name, old.get(name), new.get(name), sentence)
    assert differ or "the same package versions for both" in sentence, sentence


def test_the_clients_get_the_numpy_the_app_gets_on_each_python():
    """requirements-clients.txt pins numpy as requirements.txt does, and its lock agrees on each
    Python CI runs the clients on (the lock's 3.12+ line is written by hand: its pip freeze is
    made on 3.11, so a refresh would drop it or leave it stale without this)."""
    def numpy_lines(name: str) -> list[str]:
        return [line for line in (ROOT / name).read_text().splitlines()
                if re.match(r"numpy\s*==", line)]
    for version in ("3.11", "3.12", "3.13", "3.14"):
        app = _pins_for(numpy_lines("requirements.txt"), version)
        assert app and app == _pins_for(numpy_lines("requirements-clients.txt"), version) \
            == _pins_for(numpy_lines("requirements-clients.lock"), version), version


def test_the_lock_is_what_its_script_writes():
    """requirements.lock read back per Python its header names, then written again by the
    script's own rule: the same lines (no hand edits, one pin per package on each Python)."""
    text = (ROOT / "requirements.lock").read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    header = " ".join(line for line in text.splitlines() if line.startswith("#"))
    versions = re.search(r"alone on Python ([0-9., ]+)\)", header).group(1).split(",")
    frozen = {tuple(map(int, v.strip().split("."))): _pins_for(lines, v.strip())
              for v in versions}
    assert _lock_script().lock_lines(frozen) == lines


def test_funcignore_keeps_existing_runtime_files():
    patterns = funcignore_patterns()
    for rel in ("function_app.py", "host.json", "requirements.txt", "requirements.lock"):
        if (ROOT / rel).exists():
            assert not ignored(rel, patterns)
    pkg = ROOT / "embedding_core"
    if pkg.is_dir():
        for file in pkg.rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                rel = file.relative_to(ROOT).as_posix()
                assert not ignored(rel, patterns), rel


# --------------------------------------------------------------------------- smoke script

SMOKE = ROOT / "scripts" / "smoke_deployed.py"


def load_smoke_module():
    spec = importlib.util.spec_from_file_location("smoke_deployed", SMOKE)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_smoke_help_runs_without_network():
    proc = subprocess.run([sys.executable, str(SMOKE), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "--entra" in proc.stdout and "--key-env" in proc.stdout


def test_smoke_url_validation_is_pure():
    smoke = load_smoke_module()
    assert smoke.validate_base_url("https://func-api-x.azurewebsites.net/") == "https://func-api-x.azurewebsites.net"
    assert smoke.validate_base_url("http://127.0.0.1:7071") == "http://127.0.0.1:7071"
    assert smoke.validate_base_url("http://localhost:7071") == "http://localhost:7071"
    assert smoke.validate_base_url("http://[::1]:7071") == "http://[::1]:7071"
    for bad in ("", "ftp://x", "http://example.com", "https://u:p@x.net", "https://x.net/?code=1", "x.net"):
        with pytest.raises(ValueError):
            smoke.validate_base_url(bad)


def test_smoke_never_takes_the_key_on_the_command_line():
    smoke = load_smoke_module()
    parser = smoke.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--key", "secret"])
    args = parser.parse_args(["--url", "https://x.net"])
    assert smoke.auth_headers(args, {"EMBEDDINGS_API_KEY": "k1,k2"}) == {"api-key": "k1"}
    args = parser.parse_args(["--url", "https://x.net", "--key-header", "bearer", "--key-env", "MY_KEY"])
    assert smoke.auth_headers(args, {"MY_KEY": "abc"}) == {"Authorization": "Bearer abc"}
    with pytest.raises(smoke.SmokeError):
        smoke.auth_headers(parser.parse_args([]), {})


class _StubHandler(http.server.BaseHTTPRequestHandler):
    key = "loopback-test-key"
    seen: List[Tuple[str, str, Dict[str, str]]] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _authorized(self) -> bool:
        return self.headers.get("api-key") == self.key

    def do_GET(self):
        self.seen.append(("GET", self.path, dict(self.headers)))
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path.startswith("/info?api-version="):
            self._send(200, {"model_name": "stub", "model_type": "embeddings"} if self._authorized() else {})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append(("POST", self.path, dict(self.headers)))
        if not self.path.startswith("/embeddings?api-version="):
            self._send(404, {"error": "not found"})
        elif not self._authorized():
            self._send(401, {"error": {"code": "Unauthorized"}})
        else:
            data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i, _ in enumerate(body["input"])]
            self._send(200, {"object": "list", "data": data, "model": "stub"})


def test_smoke_against_loopback_stub():
    _StubHandler.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        env = {k: v for k, v in os.environ.items() if k not in ("AZURE_FUNCTION_URL", "EMBEDDINGS_API_KEY")}
        env["EMBEDDINGS_API_KEY"] = _StubHandler.key
        proc = subprocess.run(
            [sys.executable, str(SMOKE), "--url", url, "--timeout", "10"],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "smoke test passed" in proc.stdout and "dims=3" in proc.stdout
        assert _StubHandler.key not in proc.stdout + proc.stderr
        env["EMBEDDINGS_API_KEY"] = "wrong-key"
        proc = subprocess.run(
            [sys.executable, str(SMOKE), "--url", url, "--timeout", "10"],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert proc.returncode == 1
        assert "FAIL" in proc.stderr and "wrong-key" not in proc.stdout + proc.stderr
    finally:
        server.shutdown()
        server.server_close()
    paths = [(m, p.split("?")[0]) for m, p, _ in _StubHandler.seen]
    assert ("POST", "/embeddings") in paths and ("GET", "/info") in paths



class _Collector(http.server.BaseHTTPRequestHandler):
    """Another origin: records what reaches it."""
    seen: List[Tuple[str, str, Dict[str, str]]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.seen.append(("GET", self.path, dict(self.headers)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_GET


class _Redirecting(_StubHandler):
    """An endpoint that answers /health and redirects everything else to ``target`` (plain
    http, another port: another origin), as a gateway or a reclaimed host name could."""
    target = ""

    def _redirect(self):
        self.seen.append((self.command, self.path, dict(self.headers)))
        self.send_response(302)
        self.send_header("Location", f"{self.target}/collect{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._redirect()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._redirect()


def test_smoke_sends_credentials_to_no_host_a_redirect_names():
    """A 3xx from the endpoint is not followed: urllib would send the request's headers, the key
    among them, to the host the redirect names (http too). The check fails naming where the
    redirect points, and the other origin gets nothing."""
    _Collector.seen, _Redirecting.seen = [], []
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    _Redirecting.target = f"http://localhost:{collector.server_address[1]}"
    for server in (collector, app):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("AZURE_FUNCTION_URL", "EMBEDDINGS_API_KEY")}
        env["EMBEDDINGS_API_KEY"] = _StubHandler.key
        for extra in ([], ["--skip-unauthenticated-check", "--key-header", "bearer"]):
            proc = subprocess.run(
                [sys.executable, str(SMOKE), "--url", f"http://127.0.0.1:{app.server_address[1]}",
                 "--timeout", "10", *extra], capture_output=True, text=True, timeout=60, env=env)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert proc.stderr.startswith(
                f"FAIL GET /info returned 302: 'a redirect to {_Redirecting.target}/collect/info?"
            ), proc.stderr
            assert "not followed: credentials go only to --url" in proc.stderr
    finally:
        for server in (app, collector):
            server.shutdown()
            server.server_close()
    assert [(m, p.split("?")[0]) for m, p, h in _Redirecting.seen] == [("GET", "/info")] * 2
    sent = [{k.lower(): v for k, v in headers.items()} for _, _, headers in _Redirecting.seen]
    assert sent[0]["api-key"] == _StubHandler.key                     # sent to --url only
    assert sent[1]["authorization"] == f"Bearer {_StubHandler.key}"
    assert _Collector.seen == []


class _HostileHealth(_StubHandler):
    """A /health whose build, problems and model name carry terminal control sequences."""
    body: Dict[str, Any] = {}

    def do_GET(self):
        if self.path == "/health":
            self._send(200, self.body)
        else:
            self._send(200, {"model_name": "m\x1b]0;owned\x07"})


@pytest.mark.parametrize("body, args", [
    ({"status": "ok", "build": "\x1b]0;owned\x07"}, ["--expect-build", "abcdefabcdef"]),
    ({"status": "degraded", "problems": ["\x1b[2J cleared"]}, []),
    ({"status": "ok", "build": "\x1b]0;owned\x07"}, ["--skip-unauthenticated-check"]),
])
def test_smoke_prints_no_control_character_the_server_sent(body, args):
    """What the server answers (a build, problems, a model name) reaches the terminal with its
    control characters escaped, in the wait and FAIL lines of the postdeploy hook's path too:
    an answer cannot write control sequences."""
    _HostileHealth.body = body
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("AZURE_FUNCTION_URL", "EMBEDDINGS_API_KEY")}
        env["EMBEDDINGS_API_KEY"] = _StubHandler.key
        health_only = [] if "--skip-unauthenticated-check" in args else ["--health-only"]
        proc = subprocess.run(
            [sys.executable, str(SMOKE), "--url", f"http://127.0.0.1:{server.server_address[1]}",
             "--timeout", "10", "--wait", "1", *health_only, *args],
            capture_output=True, text=True, timeout=60, env=env)
    finally:
        server.shutdown()
        server.server_close()
    out = proc.stdout + proc.stderr
    assert not any(c in out for c in "\x1b\x07"), out
    assert "\\x1b" in out, out
    assert proc.returncode == (0 if health_only == [] else 1), out


def test_smoke_escapes_control_characters_only():
    smoke = load_smoke_module()
    assert smoke.shown("all-MiniLM-L6-v2 … é") == "all-MiniLM-L6-v2 … é"
    assert smoke.shown("x\x1b]0;owned\x07\x9b") == "x\\x1b]0;owned\\x07\\x9b"
    assert smoke.shown(None) == "None"


def _hook_commands(hook: Dict[str, Any], continue_on_error: bool = False) -> List[List[str]]:
    """An azure.yaml hook's commands: POSIX python3; Windows the py launcher if there is one
    (azd's own first choice), else python, each with the same arguments."""
    import shlex
    posix, windows = hook["posix"], hook["windows"]
    assert posix["shell"] == "sh" and windows["shell"] == "pwsh"
    for platform in (posix, windows):
        assert platform.get("continueOnError", "false") == str(continue_on_error).lower()
    commands = [shlex.split(posix["run"])]
    m = re.fullmatch(r"if \(Get-Command py -ErrorAction SilentlyContinue\) \{ (py -3 [^}]+) \} "
                     r"else \{ (python [^}]+) \}", windows["run"])
    assert m, windows["run"]
    commands += [shlex.split(m.group(1))[1:], shlex.split(m.group(2))]
    assert [c[0] for c in commands] == ["python3", "-3", "python"]
    assert len({tuple(c[1:]) for c in commands}) == 1
    assert commands[0][1] == "scripts/smoke_deployed.py" and SMOKE.is_file()
    return commands


def test_azd_checks_health_after_each_deployment():
    """azure.yaml's postdeploy hook: the smoke script's /health check, retried while the app
    restarts, for the build the service's prepackage hook recorded; its arguments are the
    script's."""
    doc = load_simple_yaml((ROOT / "azure.yaml").read_text())
    hooks = doc["hooks"]
    assert set(hooks) == {"postdeploy"}
    parser = load_smoke_module().build_parser()
    args = parser.parse_args(_hook_commands(hooks["postdeploy"])[0][2:])
    assert args.health_only and args.wait == 300 and args.expect_build == "local"
    assert args.settle == 10 and not args.record_build
    # recording never stops a packaging, not even without a Python
    args = parser.parse_args(_hook_commands(doc["services"]["api"]["hooks"]["prepackage"],
                                            continue_on_error=True)[0][2:])
    assert args.record_build


class _FlakyHealth(http.server.BaseHTTPRequestHandler):
    """/health: ``failures`` answers of 503 (the package-load error), then 200."""
    failures = 0
    calls = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).calls += 1
        failing = type(self).calls <= type(self).failures
        raw = json.dumps({"error": {"code": "ServiceUnavailable", "message": "The app cannot "
                                    "load its packages: built for Python 3.11"}} if failing
                         else {"status": "ok"}).encode()
        self.send_response(503 if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.mark.parametrize("failures, wait, passes", [(2, "30", True), (1000, "2", False)])
def test_smoke_health_only_waits_for_a_restarting_app(failures, wait, passes):
    """--health-only needs no key; --wait retries 5xx, then fails with the app's last answer."""
    _FlakyHealth.failures, _FlakyHealth.calls = failures, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items() if k != "EMBEDDINGS_API_KEY"}
        env["AZURE_FUNCTION_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
        proc = subprocess.run([sys.executable, str(SMOKE), "--health-only", "--wait", wait,
                               "--timeout", "10"],
                              capture_output=True, text=True, timeout=60, env=env)
    finally:
        server.shutdown()
        server.server_close()
    if passes:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("wait GET /health        503") == 2
        assert "ok   GET /health        200" in proc.stdout and _FlakyHealth.calls == 3
    else:
        assert proc.returncode == 1
        assert "GET /health returned 503" in proc.stderr
        assert "cannot load its packages" in proc.stderr and _FlakyHealth.calls >= 2


class _BuildHealth(http.server.BaseHTTPRequestHandler):
    """/health: 200 naming ``builds`` in turn (None: no ``build``, older code; 503: a restart),
    then the last."""
    builds: List[Any] = []
    calls = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        cls = type(self)
        build = cls.builds[min(cls.calls, len(cls.builds) - 1)]
        cls.calls += 1
        if build in ("no credentials", "development key"):
            raw = json.dumps({"error": {"code": "ServiceUnavailable", "message": (
                "Every request is refused: the server has no usable credentials (EMBEDDINGS_API_"
                "KEYS or the EMBEDDINGS_ENTRA_* settings" + (
                    "; the README's development key is not accepted on Azure"
                    if build == "development key" else "") + "); the server log says why.")}})
            build = 503
        elif str(build).startswith("degraded"):   # Entra ID on, the API keys' reference unresolved
            raw = json.dumps({"status": "degraded", "build": _local_build(), "problems": [
                "no key of EMBEDDINGS_API_KEYS is usable (Entra ID tokens are)" + (
                    "; the README's development key is not accepted on Azure"
                    if "development key" in build else "")]})
        else:
            raw = json.dumps({"error": {"code": "ServiceUnavailable"}} if build == 503 else
                             {"status": "ok", **({"build": build} if build else {})})
        raw = raw.encode()
        if build == "cut":          # an instance recycled while it answers
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"status"')
            self.close_connection = True
            return
        self.send_response(503 if build == 503 else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def _local_build() -> str:
    from embedding_core import build
    return build.digest()


def _health_stub(builds: List[Any], *args: str, script: Path = SMOKE,
                 env_name: str = "") -> subprocess.CompletedProcess:
    """``script`` --health-only --expect-build local against a _BuildHealth answering ``builds``
    ("local": this checkout's), as azd runs it for environment ``env_name`` (if given)."""
    _BuildHealth.builds = [_local_build() if b == "local" else b for b in builds]
    _BuildHealth.calls = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BuildHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items()
               if k not in ("EMBEDDINGS_API_KEY", "AZURE_ENV_NAME")}
        env["AZURE_FUNCTION_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
        if env_name:
            env["AZURE_ENV_NAME"] = env_name
        return subprocess.run([sys.executable, str(script), "--health-only", "--timeout", "10",
                               "--expect-build", "local", *args],
                              capture_output=True, text=True, timeout=60, env=env)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("builds, wait, passes", [
    ([None, "0123456789ab", "local"], "30", True),      # older code, the previous build, then ours
    (["0123456789ab"], "2", False),                     # never ours
    ([None], "0", False),                               # code older than the check
])
def test_smoke_waits_out_instances_still_running_the_previous_build(builds, wait, passes):
    """--expect-build local: a 200 from another build (an instance still running the previous
    deployment) is waited out like a 5xx, and after the wait it fails saying which build."""
    local = _local_build()
    proc = _health_stub(builds, "--wait", wait)
    if passes:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "wait GET /health        200, but it names no build" in proc.stdout
        assert (f"wait GET /health        200, but it answers from build 0123456789ab, not "
                f"{local}") in proc.stdout
        assert "ok   GET /health        200" in proc.stdout and f"build={local}" in proc.stdout
        assert _BuildHealth.calls == 3
    else:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "GET /health answered 200, but it " in proc.stderr, proc.stderr
        assert (f"from build 0123456789ab, not {local}" if builds[0] else
                f"names no build (code older than build {local})") in proc.stderr
        assert "instances still run the previous deployment" in proc.stderr


def test_smoke_settles_across_a_restart_after_the_first_good_answer():
    """--settle: the new build answers, the host restarts (503, then the old build on an instance
    not yet recycled), then the new build for the whole window: one pass, after settling again."""
    proc = _health_stub(["local", 503, "cut", "0123456789ab", "local"], "--wait", "30",
                        "--settle", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("(settling again)") == 1, proc.stdout
    assert "answered, then 503" in proc.stdout
    assert "IncompleteRead" in proc.stdout          # waited out, not a traceback
    assert "200, but it answers from build 0123456789ab" in proc.stdout
    # 3 s of answers every 2 s: at 0, 2 and 3 s (two if one took over a second)
    assert 4 + 2 <= _BuildHealth.calls <= 4 + 3
    # a restart the wait does not outlast fails with the last answer
    proc = _health_stub(["local", 503], "--wait", "1", "--settle", "10")
    assert proc.returncode == 1 and "GET /health returned 503" in proc.stderr, proc.stderr
    assert "Key Vault" not in proc.stderr


def test_smoke_says_what_to_do_when_the_key_did_not_resolve():
    """The first deployment's commonest failure (the Key Vault role still propagating when the
    app read its key) fails the check with the app's 503 and the way out."""
    proc = _health_stub(["no credentials"], "--wait", "0")
    assert proc.returncode == 1
    assert "GET /health returned 503" in proc.stderr and "no usable credentials" in proc.stderr
    assert 'see docs/deploy.md, "Key Vault reference not resolved"' in proc.stderr
    assert "azd hooks run postdeploy" in proc.stderr
    # the app names another cause: no Key Vault advice
    proc = _health_stub(["development key"], "--wait", "0")
    assert proc.returncode == 1 and "development key is not accepted" in proc.stderr
    assert "Key Vault" not in proc.stderr
    proc = _health_stub(["degraded, development key"], "--wait", "0")
    assert proc.returncode == 1 and "development key is not accepted" in proc.stderr
    assert "Key Vault" not in proc.stderr


def test_smoke_fails_on_a_degraded_health():
    """With Entra ID on, API keys that did not resolve leave /health 200 "degraded" (Entra tokens
    work, every key caller gets 401): the check passed on it. It now waits it out like a 503 and
    fails naming the problem, with the way out; a "degraded" that turns "ok" passes."""
    proc = _health_stub(["degraded"], "--wait", "0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ("GET /health answered 200, but its status is 'degraded': no key of "
            "EMBEDDINGS_API_KEYS is usable (Entra ID tokens are)") in proc.stderr
    assert 'see docs/deploy.md, "Key Vault reference not resolved"' in proc.stderr
    proc = _health_stub(["degraded", "local"], "--wait", "30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wait GET /health        200, but its status is 'degraded'" in proc.stdout
    assert _BuildHealth.calls == 2


@pytest.mark.parametrize("value", ["0123456789AB", " local "])
def test_smoke_expect_build_values(value):
    smoke = load_smoke_module()
    assert smoke.expected_build(value, {}) in (("0123456789ab",), (_local_build(),))
    assert smoke.expected_build("", {}) == ()
    for bad in ("0123", "0123456789abz", "latest"):
        with pytest.raises(ValueError):
            smoke.expected_build(bad)


@pytest.mark.parametrize("option, value", [("--wait", "nan"), ("--wait", "-1"),
                                           ("--settle", "inf"), ("--settle", "-2"),
                                           ("--expect-build", "main")])
def test_smoke_refuses_unusable_waits_and_builds_before_asking(option, value, capsys):
    smoke = load_smoke_module()
    with pytest.raises(SystemExit) as exit_:    # argparse's usage error; nothing listens on :9
        smoke.main(["--url", "http://127.0.0.1:9", "--health-only", option, value])
    assert exit_.value.code == 2 and option in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_azd_environment(monkeypatch):
    """The smoke script run by these tests must not use or remove a developer's own azd record
    (.azure/$AZURE_ENV_NAME/embeddings-build)."""
    monkeypatch.delenv("AZURE_ENV_NAME", raising=False)


def test_the_build_azd_packaged_is_expected_not_the_folder_edited_since(tmp_path):
    """azd up packages, provisions for minutes, deploys: the prepackage hook's --record-build keeps
    the build packaged, and the post-deploy check expects that one (once) although a file changed
    meanwhile; without a record it reads the folder. Outside azd nothing is recorded, and the
    packaging never fails for it."""
    project = _package(tmp_path / "project")
    (project / "scripts").mkdir()
    script = project / "scripts" / "smoke_deployed.py"
    script.write_bytes(SMOKE.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "AZURE_ENV_NAME"}
    proc = subprocess.run([sys.executable, str(script), "--record-build"], capture_output=True,
                          text=True, timeout=60, env=dict(env, AZURE_ENV_NAME="dev"))
    record = project / ".azure" / "dev" / "embeddings-build"
    assert proc.returncode == 0 and record.read_text() == _local_build() + "\n", proc.stdout
    assert f"recorded build {_local_build()}" in proc.stdout
    assert load_simple_yaml((ROOT / "azure.yaml").read_text())[
        "services"]["api"]["hooks"]["prepackage"]["posix"]["run"] == \
        "python3 scripts/smoke_deployed.py --record-build"
    with open(project / "embedding_core" / "pooling.py", "a", encoding="utf-8") as f:
        f.write("# edited while azd provisions\n")
    proc = _health_stub(["local"], script=script, env_name="dev")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"expect build {_local_build()}, as azd packaged it, or " in proc.stdout
    assert not record.exists()                            # used once
    # a check that fails keeps it, for `azd hooks run postdeploy` once the cause is fixed
    record.write_text(_local_build() + "\n")              # packaged, then edited, again
    proc = _health_stub(["no credentials"], "--wait", "0", script=script, env_name="dev")
    assert proc.returncode == 1 and record.exists(), proc.stdout + proc.stderr
    proc = _health_stub(["local"], script=script, env_name="dev")
    assert proc.returncode == 0 and not record.exists(), proc.stdout + proc.stderr
    proc = _health_stub(["local"], script=script, env_name="dev")
    assert proc.returncode == 1 and f"answers from build {_local_build()}, not " in proc.stderr
    # a record left by a packaging never deployed: the folder's build is accepted too
    record.write_text("0123456789ab\n")
    edited = subprocess.run([sys.executable, "-c", "from embedding_core import build; "
                             "print(build.current())"], cwd=project, capture_output=True,
                            text=True, timeout=60).stdout.strip()
    _BuildHealth.builds = [edited]
    proc = _health_stub([edited], script=script, env_name="dev")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"expect build 0123456789ab, as azd packaged it, or {edited}" in proc.stdout
    # a packaging whose recording fails leaves no record of an earlier one (kept by a check that
    # failed), which would let the previous deployment's build pass (review h_review32 F3)
    record.write_text("0123456789ab\n")
    (project / "embedding_core" / "build.py").rename(project / "build.py.away")
    proc = subprocess.run([sys.executable, str(script), "--record-build"], capture_output=True,
                          text=True, timeout=60, env=dict(env, AZURE_ENV_NAME="dev"))
    assert proc.returncode == 0 and "no build recorded (cannot read the app's code" in proc.stdout
    assert not record.exists()
    (project / "build.py.away").rename(project / "embedding_core" / "build.py")
    proc = subprocess.run([sys.executable, str(script), "--record-build"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 0 and "no build recorded (AZURE_ENV_NAME is not set" in proc.stdout
    assert [p.name for p in (project / ".azure").rglob("*")] == ["dev"]    # nothing new


def test_health_answers_without_a_build_it_cannot_compute(monkeypatch, caplog):
    """A failure to read the app's code never fails /health: "build" is null, logged once, tried
    again on the next call; the smoke script says so rather than "older code"."""
    import logging

    from conftest import make_service
    from embedding_core import build
    from embedding_core.api import ApiRequest

    def unreadable(root=build.ROOT):
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "a file name that is not UTF-8")
    monkeypatch.setattr(build, "_current", [])
    monkeypatch.setattr(build, "_failed", False)
    monkeypatch.setattr(build, "digest", unreadable)
    svc = make_service()

    def health():
        res = svc.health(ApiRequest("GET", "/health", {}, {}, b""))
        assert res.status == 200
        return json.loads(res.body)
    with caplog.at_level(logging.WARNING, logger="embedding_core.build"):
        assert health()["build"] is None and health()["build"] is None
    assert [r.getMessage() for r in caplog.records] == [
        "GET /health cannot name the build: reading the app's code failed"]
    monkeypatch.undo()
    monkeypatch.setattr(build, "_current", [])
    assert health()["build"] == _local_build()
    smoke = load_smoke_module()
    assert smoke.other_build({"status": "ok", "build": None}, ("0123456789ab",)) == (
        "it could not compute its build (expected 0123456789ab; its log says why)")
    assert smoke.other_build({"status": "ok"}, ("0123456789ab", "ba9876543210")) == (
        "it names no build (code older than build 0123456789ab or ba9876543210)")


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_the_build_follows_symlinks_as_azd_zips_them(tmp_path):
    """azd's zip follows symlinked directories, and a symlinked embedding_core/ is zipped where
    the link is: the digest of such a folder equals that of the copy the instance gets."""
    from embedding_core import build

    copy = _package(tmp_path / "copy")
    for name in ("plug", "plug2"):
        (copy / "embedding_core" / name).mkdir()
        (copy / "embedding_core" / name / "extra.py").write_text("X = 1\n")
    linked = _package(tmp_path / "linked")
    (tmp_path / "elsewhere" / "plug").mkdir(parents=True)
    (tmp_path / "elsewhere" / "plug" / "extra.py").write_text("X = 1\n")
    for name in ("plug", "plug2"):            # two links to one folder: two copies in the zip
        (linked / "embedding_core" / name).symlink_to(tmp_path / "elsewhere" / "plug")
    # a loop is not followed (azd's zip would nest it until the OS refuses the path)
    (tmp_path / "elsewhere" / "plug" / "loop").symlink_to(linked / "embedding_core")
    assert {"embedding_core/plug/extra.py", "embedding_core/plug2/extra.py"} <= {
        p.as_posix() for p in build.files(linked)}
    assert build.digest(linked) == build.digest(copy) != _local_build()
    # embedding_core/ itself a link (a shared package): the app's root is where the link is
    shared = tmp_path / "shared"
    (shared / "pkg").parent.mkdir(exist_ok=True)
    (copy / "embedding_core").rename(shared / "pkg")
    (copy / "embedding_core").symlink_to(shared / "pkg")
    proc = subprocess.run([sys.executable, "-c", "from embedding_core import build; "
                           "print(build.current())"], cwd=copy, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == build.digest(linked), proc.stderr


def _package(dest: Path) -> Path:
    """What a deployment ships of the app's code, as .funcignore filters it (the models' data
    files left out: /health never loads one)."""
    patterns = funcignore_patterns()
    for src in [ROOT / n for n in ("function_app.py", "host.json", "requirements.txt",
                                   "requirements.lock")] + sorted((ROOT / "embedding_core").rglob("*")):
        rel = src.relative_to(ROOT)
        if src.is_file() and not ignored(rel.as_posix(), patterns) and "models" not in rel.parts:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    return dest


def test_the_deployed_copy_answers_with_the_build_of_the_folder_it_was_made_from(tmp_path):
    """The app serving a copy of the package (another folder, as on Azure) names the build the
    smoke script computes from this checkout; once a file of the copy differs, it names another
    and the check fails."""
    from live_server import LiveServer

    package = _package(tmp_path / "package")
    local = _local_build()

    def smoke(app_dir: Path) -> subprocess.CompletedProcess:
        server = LiveServer({"EMBEDDINGS_API_KEYS": "k" * 32}, app_dir=app_dir)
        try:
            env = {k: v for k, v in os.environ.items() if k != "EMBEDDINGS_API_KEY"}
            env["AZURE_FUNCTION_URL"] = server.url
            return subprocess.run([sys.executable, str(SMOKE), "--health-only", "--timeout", "30",
                                   "--expect-build", "local"],
                                  capture_output=True, text=True, timeout=60, env=env)
        finally:
            server.stop()
    proc = smoke(package)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"build={local}" in proc.stdout
    with open(package / "embedding_core" / "pooling.py", "a", encoding="utf-8") as f:
        f.write("# a change the checkout does not have\n")
    proc = smoke(package)
    assert proc.returncode == 1
    assert "answers from build " in proc.stderr and f", not {local}:" in proc.stderr, proc.stderr


def test_the_build_is_of_the_apps_code_wherever_it_is(tmp_path):
    """The digest covers the code and the registry, by path and content, not the folder it is in,
    nor caches or the models' data files (which the registry's checksums pin)."""
    from embedding_core import build

    package = _package(tmp_path / "a")
    assert build.digest(package) == _local_build()
    covered = {p.as_posix() for p in build.files(package)}
    assert {"function_app.py", "host.json", "requirements.txt", "requirements.lock",
            "embedding_core/registry.json", "embedding_core/service.py"} <= covered
    (package / "embedding_core" / "__pycache__").mkdir(exist_ok=True)
    (package / "embedding_core" / "__pycache__" / "service.cpython-311.pyc").write_bytes(b"x")
    (package / "embedding_core" / "models" / "m").mkdir(parents=True)
    (package / "embedding_core" / "models" / "m" / "model.onnx").write_bytes(b"x")
    (package / "embedding_core" / "models" / "m" / "config.json").write_bytes(b"{}")
    assert build.digest(package) == _local_build()
    registry = package / "embedding_core" / "registry.json"
    registry.write_bytes(registry.read_bytes().replace(b"cb04bf", b"cb04bE"))   # a model's sha256
    assert build.digest(package) != _local_build()


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_smoke_against_real_app_on_loopback(tmp_path):
    """End to end: the real function_app behind tools/local_host on 127.0.0.1, then the smoke script."""
    if not (ROOT / "tools" / "local_host.py").is_file() or not (ROOT / "function_app.py").is_file():
        pytest.skip("local host or function_app.py not present")
    import time
    import urllib.request

    port = _free_loopback_port()
    key = "smoke-e2e-" + os.urandom(8).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "AZURE_FUNCTION_URL"))}
    env["EMBEDDINGS_API_KEYS"] = key
    log_path = tmp_path / "local_host.log"
    log_file = open(log_path, "w", encoding="utf-8")
    server = subprocess.Popen(
        [sys.executable, "-m", "tools.local_host", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"local host did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        env_smoke = dict(env, EMBEDDINGS_API_KEY=key)
        proc = subprocess.run(
            [sys.executable, str(SMOKE), "--url", url, "--timeout", "60", "--expect-build",
             "local"],
            capture_output=True, text=True, timeout=180, env=env_smoke,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "dims=384" in proc.stdout and f"build={_local_build()}" in proc.stdout
        assert key not in proc.stdout + proc.stderr
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log_file.close()
    assert key not in log_path.read_text(), "the API key must never be logged"


def test_smoke_with_entra_id_against_a_deployment_that_accepts_only_tokens(monkeypatch, capsys):
    """deploy.md's `smoke_deployed.py --url "$URL" --entra --scope "api://$APP_ID/.default"`,
    against the real app on loopback configured as the guide's registration leaves it (Entra
    ID only): DefaultAzureCredential's token for that scope passes every step, the check that a
    call without credentials is refused included; with Option B's scope (ml.azure.com) the
    token is refused, and the check fails saying so; without --scope no token is asked for. DefaultAzureCredential is the real one: it
    finds a managed identity, as on Azure."""
    from clientkit import loopback_only, use_managed_identity
    from conftest import REGISTERED_APP_ID as app_id, entra_live_server

    smoke = load_smoke_module()
    with loopback_only("the smoke test"), entra_live_server(None, app_id) as (idp, server):
        use_managed_identity(monkeypatch, idp.managed_identity_env())
        assert smoke.main(["--url", server.url, "--entra", "--scope",
                           f"api://{app_id}/.default"]) == 0
        out = capsys.readouterr().out
        assert "ok   POST /embeddings   401 without credentials" in out
        assert "dims=384" in out and "smoke test passed" in out
        assert smoke.main(["--url", server.url, "--entra", "--scope",
                           "https://ml.azure.com/.default"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("FAIL GET /info returned 401"), err
        # No scope, no token: --entra asks for none of its own choosing.
        with pytest.raises(SystemExit) as exit_:
            smoke.main(["--url", server.url, "--entra"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--entra needs --scope: the API's, api://<app-client-id>/.default" in err, err
    assert idp.resources == [f"api://{app_id}", "https://ml.azure.com"]


def test_what_infra_writes_is_read_by_the_app_as_the_intended_callers():
    """The secret keyvault.bicep writes, parsed by the app's own EMBEDDINGS_API_KEYS reader:
    every entry is accepted and each caller gets the name infra gave it."""
    from embedding_core.auth import Authenticator
    from embedding_core.settings import Settings, parse_api_keys

    legacy = "0123456789abcdef" * 4
    first = stored_api_keys("aB3dE5gH7jK9mN1", "primary,alice,bob.svc")
    rotating = first + ",primary:" + "b" * 64          # a rotation in progress: two primaries
    for value, callers in ((first, {"key:primary", "key:alice", "key:bob.svc"}),
                           (rotating, {"key:primary", "key:alice", "key:bob.svc"}),
                           (stored_api_keys(legacy), None)):
        keys, problems = parse_api_keys(value)
        assert problems == (), problems
        auth = Authenticator(Settings.from_env({"EMBEDDINGS_API_KEYS": value}))
        seen = {auth.check({"api-key": k.secret}).id for k in keys}
        if callers is not None:
            assert seen == callers
        else:                                           # the old plain key keeps working
            assert len(seen) == 2 and "key:primary" in seen


def test_the_example_local_settings_are_current(caplog):
    """`cp local.settings.json.example local.settings.json` (README) gives `func start` settings
    the app reads, a key it accepts, and nothing retired (which would log a warning at every
    start)."""
    from embedding_core.settings import RETIRED, Settings

    values = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    sources = "".join(p.read_text() for p in (ROOT / "embedding_core").glob("*.py"))
    for name in values:
        if name.startswith("EMBEDDINGS_"):
            assert f'"{name}"' in sources and name not in RETIRED, name
    with caplog.at_level("WARNING", logger="embedding_core.settings"):
        settings = Settings.from_env(values)
    assert settings.api_keys and not settings.api_key_problems
    assert not [r for r in caplog.records if "no longer used" in r.getMessage()]
    # The README's examples (written for make serve) work unchanged under func start.
    serve_key = re.search(r"^serve: export EMBEDDINGS_API_KEYS \?= (\S+)$",
                          (ROOT / "Makefile").read_text(), re.M).group(1)
    assert values["EMBEDDINGS_API_KEYS"] == serve_key
    assert f"api-key: {serve_key}" in (ROOT / "README.md").read_text()


def test_the_tuning_defaults_shown_in_the_deploy_guide_are_the_templates():
    """docs/deploy.md's "Optional tuning (defaults shown)" lines name the values azd uses when the
    variable is unset (`${NAME=default}` in main.parameters.json)."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    block = guide.split("# Optional tuning (defaults shown):", 1)[1].split("azd up", 1)[0]
    shown = re.findall(r"^# azd env set (\w+) (\S+)", block, re.M)
    defaults = dict(re.findall(r'"\$\{(\w+)=([^}]*)\}"', (INFRA / "main.parameters.json").read_text()))
    assert len(shown) >= 5
    for name, value in shown:
        assert defaults.get(name) == value, (name, value, defaults.get(name))


def test_zone_redundancy_brings_zrs_storage_and_at_least_two_always_ready():
    """Microsoft Learn (reliability-functions; flex-consumption-plan, "Always ready instances"):
    a zone-redundant Flex app needs a ZRS host storage account, and the platform keeps and bills
    at least two always-ready instances, refusing fewer than two configured."""
    from bicep_eval import Evaluator
    tree = parse(MAIN)
    got = {}
    for zr in (False, True):
        for asked in (0, 1, 2, 5):
            ev = Evaluator(tree, {"environmentName": "dev", "location": "swedencentral",
                                  "entraTenantId": "t", "zoneRedundant": zr,
                                  "alwaysReadyHttpInstances": asked},
                           resource_group={"name": "rg", "location": "swedencentral"})
            got[zr, asked] = ev.variable("effectiveAlwaysReady")
    assert got == {(False, 0): 0, (False, 1): 1, (False, 2): 2, (False, 5): 5,
                   (True, 0): 0, (True, 1): 2, (True, 2): 2, (True, 5): 5}
    assert render(tree["modules"]["functionApp"]["config"]["params"]["alwaysReadyHttpInstances"]) \
        == "effectiveAlwaysReady"
    assert render(tree["modules"]["storage"]["config"]["params"]["zoneRedundant"]) == "zoneRedundant"
    storage = parse(MODULES / "storage.bicep")
    for zr, sku in ((False, "Standard_LRS"), (True, "Standard_ZRS")):
        ev = Evaluator(storage, {"name": "st", "location": "x", "tags": {},
                                 "deploymentContainerName": "c", "zoneRedundant": zr})
        resource = one_resource(MODULES / "storage.bicep", "Microsoft.Storage/storageAccounts")
        assert ev.eval(resource["sku"]["name"], {}) == sku
    assert params(MODULES / "storage.bicep")["zoneRedundant"]["default"] is False


def test_the_build_digest_covers_shipped_code_by_path_and_nothing_else(tmp_path):
    """Files under dot-directories and __pycache__ are never shipped, a registry.json is the
    package's own only, and moving a file to another path is another build."""
    from embedding_core import build

    root = tmp_path / "app"
    pkg = root / build.PACKAGE
    for rel, text in {"function_app.py": "app", f"{build.PACKAGE}/a.py": "a",
                      f"{build.PACKAGE}/registry.json": "{}",
                      f"{build.PACKAGE}/.venv/lib/site.py": "x",
                      f"{build.PACKAGE}/__pycache__/stale.py": "x",
                      f"{build.PACKAGE}/tools/registry.json": "{}"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    assert [p.as_posix() for p in build.files(root)] == [
        f"{build.PACKAGE}/a.py", f"{build.PACKAGE}/registry.json", "function_app.py"]
    before = build.digest(root)
    (pkg / "a.py").rename(pkg / "b.py")
    assert build.digest(root) != before


# --------------------------------------------------------------------------- parameters reach the resources


def _code_without_comments(path: Path) -> str:
    """The template's code: no // comments and no @description(...) text, which may name a
    parameter without using it."""
    return "\n".join(line.split("//", 1)[0] for line in path.read_text().splitlines()
                     if not line.lstrip().startswith("@description("))


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.bicep")), ids=lambda p: p.name)
def test_every_parameter_is_used(path):
    """The Bicep linter's no-unused-params: a parameter the template never reads is a setting a
    deployer changes (azd env set ...) to no effect, e.g. a module parameter main.bicep no longer
    hands on, or a module that declares a parameter and writes a constant instead."""
    code = _code_without_comments(path)
    for name in params(path):
        uses = re.findall(rf"(?<![\w.'$]){re.escape(name)}\b(?!\s*:)", code)
        # the declaration itself is one occurrence (param <name> ...)
        assert len(uses) >= 2, f"{path.name}: parameter {name} is never used"


# Module parameters main.bicep deliberately leaves at the module's default.
MODULE_DEFAULTS_KEPT = {
    "monitoring": {"retentionInDays"},      # 30 days, not a deployment setting
    "keyVault": {"apiKeyEntropy"},          # the module's fresh newGuid() (test_infra checks it)
}


def test_main_hands_every_module_option_on():
    """An optional module parameter main.bicep does not pass silently takes the module's default,
    whatever the deployer set: e.g. instanceMemoryMB (the app then always runs on 2048 MB while
    main.bicep sizes its concurrency for 512) or zoneRedundant (ZRS storage, no zone-redundant
    plan)."""
    for name, module in parse(MAIN)["modules"].items():
        declared = set(params(INFRA / module["detail"]["path"]))
        passed = set(module["config"].get("params", {}))
        assert declared - passed == MODULE_DEFAULTS_KEPT.get(name, set()), name


def test_plan_is_zone_redundant_exactly_when_asked():
    from bicep_eval import Evaluator
    tree = parse(MODULES / "plan.bicep")
    plan = one_resource(MODULES / "plan.bicep", "Microsoft.Web/serverfarms")
    required = {n: "x" for n, spec in tree["parameters"].items() if spec.get("default") is None}
    for zr in (False, True):
        ev = Evaluator(tree, dict(required, zoneRedundant=zr))
        assert ev.eval(plan["properties"]["zoneRedundant"], {}) is zr
    assert render(parse(MAIN)["modules"]["plan"]["config"]["params"]["zoneRedundant"]) == \
        "zoneRedundant"


def test_max_instance_count_is_at_least_one():
    for path in (MAIN, MODULES / "functionapp.bicep"):
        spec = params(path)["maximumInstanceCount"]
        assert {d["type"]: d.get("argument") for d in spec["decorators"]}["min_value"] == 1, path


# --------------------------------------------------------------------------- what the app must reach


def test_what_the_app_reaches_over_public_endpoints_is_reachable():
    """No VNet integration (the checkov skips CKV_AZURE_35/59/109/189/222 say why): callers reach
    the site, and the app reaches its host storage and package, the Key Vault reference and the
    telemetry ingestion endpoint, over public endpoints. Any of them closed fails every request
    (or loses all telemetry) after a deployment that succeeds."""
    site = one_resource(MODULES / "functionapp.bicep", "Microsoft.Web/sites")["properties"]
    assert site.get("publicNetworkAccess", "Enabled") == "Enabled"
    for path, rtype in ((MODULES / "storage.bicep", "Microsoft.Storage/storageAccounts"),
                        (MODULES / "keyvault.bicep", "Microsoft.KeyVault/vaults")):
        props = one_resource(path, rtype)["properties"]
        assert props.get("publicNetworkAccess", "Enabled") == "Enabled", rtype
        assert props.get("networkAcls", {}).get("defaultAction", "Allow") == "Allow", rtype
    appi = one_resource(MODULES / "monitoring.bicep", "Microsoft.Insights/components")["properties"]
    assert appi.get("publicNetworkAccessForIngestion", "Enabled") == "Enabled"


def test_the_api_key_secret_is_enabled_and_the_vault_serves_no_platform_deployment():
    """A disabled secret leaves the Key Vault reference unresolved (every key caller gets 401);
    enabledFor* would let VMs, disk encryption or any ARM template deployment read it."""
    kv = MODULES / "keyvault.bicep"
    secret = one_resource(kv, "Microsoft.KeyVault/vaults/secrets")["properties"]
    assert secret["attributes"] == {"enabled": True}
    vault = one_resource(kv, "Microsoft.KeyVault/vaults")["properties"]
    for name in ("enabledForDeployment", "enabledForDiskEncryption", "enabledForTemplateDeployment"):
        assert vault[name] is False, name


def test_host_storage_is_general_purpose_v2():
    """The Functions host storage must be a general-purpose account (StorageV2), not a legacy
    blob-only one (functions-recommendations / storage-considerations)."""
    account = one_resource(MODULES / "storage.bicep", "Microsoft.Storage/storageAccounts")
    assert account["kind"] == "StorageV2"


def test_module_outputs_are_the_values_their_names_say():
    """The identity's client id feeds AzureWebJobsStorage__clientId and the App Insights
    authentication string, its principal (object) id the role assignments; the connection string
    feeds APPLICATIONINSIGHTS_CONNECTION_STRING. Swapped, the deployment succeeds and the host
    cannot reach its storage (or telemetry is lost)."""
    ident = parse(MODULES / "identity.bicep")["outputs"]
    assert render(ident["clientId"]["value"]) == "identity.properties.clientId"
    assert render(ident["principalId"]["value"]) == "identity.properties.principalId"
    assert render(ident["id"]["value"]) == "identity.id"
    mon = parse(MODULES / "monitoring.bicep")["outputs"]
    assert render(mon["connectionString"]["value"]) == "applicationInsights.properties.ConnectionString"


# --------------------------------------------------------------------------- alerts


def _rules():
    path = MODULES / "alerts.bicep"
    return {n: resource_config(r) for n, r in resources(path).items()
            if r["type"] == "Microsoft.Insights/scheduledQueryRules"}


def test_alert_percentages_count_sampled_rows_in_real_numbers():
    """KQL divides two longs as integers: 100 * 19 / 1000 is 1, not 1.9, and the 1 % rule would
    never fire below 2 %. Every count is sum(itemCount) (sampled rows stand for itemCount
    requests)."""
    path = MODULES / "alerts.bicep"
    for name, var in (("serverErrors", "serverErrorQuery"), ("throttled", "throttledQuery"),
                      ("unauthorized", "unauthorizedQuery")):
        query = variable(path, var)
        m = re.search(r"\| project timestamp, \w+Percent = 100\.0 \* (\w+) / total$", query)
        assert m, query
        assert re.search(rf"\b{m.group(1)} = sumif\(itemCount, ", query), query
        assert "total = sum(itemCount)" in query
        assert "count()" not in query and "countif(" not in query


def test_alert_rules_are_as_operations_md_documents_them():
    """docs/operations.md's alert table: each rule's name suffix, severity, azd variables and
    what it measures (the p95 of 200 answers)."""
    table = (ROOT / "docs" / "operations.md").read_text()
    rows = re.findall(r"^\| `alert-…-([\w-]+)` \(severity (\d)\) \| ([^|]+)\| ([^|]+)\|", table, re.M)
    assert len(rows) == 4
    by_suffix = {}
    for r in _rules().values():
        by_suffix[r["name"].split("}-", 1)[1]] = r
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    for suffix, severity, _, settings in rows:
        rule = by_suffix[suffix]
        assert rule["properties"]["severity"] == int(severity), suffix
        for param, var in re.findall(r"`(\w+)` / `(\w+)`", settings):
            assert re.fullmatch(rf"\$\{{{var}(=[^}}]*)?\}}", azd[param]["value"]), (param, var)
    assert "p95 duration of 200 answers" in table
    assert '| where resultCode == "200" |' in variable(MODULES / "alerts.bicep", "latencyQuery")


def test_alert_failing_periods_fit_the_evaluation_periods():
    """ARM refuses minFailingPeriodsToAlert > numberOfEvaluationPeriods."""
    for name, rule in _rules().items():
        (criterion,) = rule["properties"]["criteria"]["allOf"]
        periods = criterion["failingPeriods"]
        assert 1 <= periods["minFailingPeriodsToAlert"] <= periods["numberOfEvaluationPeriods"], name


# --------------------------------------------------------------------------- azd variables


AZD_OWN = {"AZURE_LOCATION", "AZURE_RESOURCE_GROUP", "AZURE_KEY_VAULT_NAME", "AZURE_ENV_NAME",
           "AZURE_SUBSCRIPTION_ID", "AZURE_PRINCIPAL_ID"}


def test_every_azd_variable_the_docs_name_is_read_by_the_template():
    """`azd env set X` in the guides, and the "`X` / `param`" pairs of their tables, must reach
    the parameter they name through main.parameters.json: a renamed variable is silently
    ignored (Entra ID stays off, no action group, no zone redundancy)."""
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    read = {}
    for param, spec in azd.items():
        for var in re.findall(r"\$\{(\w+)", spec["value"]):
            read[var] = param
    docs = "".join((ROOT / "docs" / f).read_text() for f in ("deploy.md", "operations.md"))
    for var in set(re.findall(r"azd env set ([A-Z][A-Z0-9_]*[A-Z0-9])\b", docs)):
        assert var in read or var in AZD_OWN, var
    declared = params(MAIN)
    pairs = re.findall(r"`([A-Z][A-Z0-9_]+)` / `([a-z]\w+)`", docs) + \
        [(v, p) for p, v in re.findall(r"`([a-z]\w+)` / `([A-Z][A-Z0-9_]+)`", docs)]
    pairs = [(v, p) for v, p in pairs if p in declared]
    assert len(pairs) >= 12
    for var, param in pairs:
        assert read.get(var) == param, (var, param)


def test_int_and_bool_parameters_have_an_azd_default():
    """azd substitutes an empty string for an unset variable without a default, which ARM
    cannot convert to an int or a bool: the provision fails."""
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = params(MAIN)
    for name, spec in azd.items():
        if declared[name]["type"] in ("int", "bool"):
            assert re.fullmatch(r"\$\{\w+=[^}]+\}", spec["value"]), name


# --------------------------------------------------------------------------- the post-deploy check


class _Clock:
    """time for smoke_deployed.health(): monotonic and sleep on a fake clock."""

    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def _answering(smoke, monkeypatch, answers):
    """smoke.request_json answers GET /health with ``answers`` in turn (the last repeats)."""
    clock = _Clock()
    calls = []

    def request_json(method, url, headers, body, timeout):
        calls.append((method, url))
        status, payload = answers[min(len(calls) - 1, len(answers) - 1)]
        return status, payload, 0.01

    monkeypatch.setattr(smoke, "time", clock)
    monkeypatch.setattr(smoke, "request_json", request_json)
    return clock, calls


def test_smoke_waits_out_404_and_every_5xx_while_the_app_restarts(monkeypatch):
    """Right after a deployment /health may answer 404 (functions not indexed yet) or any 5xx
    (500 included) before 200: the hook waits these out (its --help says so) rather than failing
    the deployment on the first answer."""
    smoke = load_smoke_module()
    clock, calls = _answering(smoke, monkeypatch, [(404, None), (500, {"error": "starting"}),
                                                   (503, None), (200, {"status": "ok"})])
    status, payload, _ = smoke.health("https://x.net", 10, 300, out=io.StringIO())
    assert status == 200 and len(calls) == 4 and clock.slept == [1.0, 2.0, 4.0]


def test_smoke_gives_up_after_wait_seconds_backing_off_to_10(monkeypatch):
    """azure.yaml's --wait 300 is five minutes: asked again after 1, 2, 4, 8 s, then every 10 s,
    and the hook fails once 300 s have passed, not later."""
    smoke = load_smoke_module()
    clock, calls = _answering(smoke, monkeypatch, [(503, {"error": "down"})])
    with pytest.raises(smoke.SmokeError, match="returned 503"):
        smoke.run(smoke.build_parser().parse_args(
            ["--url", "https://x.net", "--health-only", "--wait", "300"]), {},
            out=io.StringIO())
    assert clock.slept[:6] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert sum(clock.slept) == 300 and max(clock.slept) == 10.0


@pytest.mark.parametrize("status", [408, 429])
def test_smoke_waits_out_a_busy_front_end(monkeypatch, status):
    """408 and 429 say "try again later" by HTTP's definition: the platform's front end may send
    them while instances restart or scale out, so the hook waits them out like a 5xx instead of
    failing the deployment, and fails with that answer once --wait has passed."""
    smoke = load_smoke_module()
    clock, calls = _answering(smoke, monkeypatch, [(status, None), (status, None),
                                                   (200, {"status": "ok"})])
    status_seen, payload, _ = smoke.health("https://x.net", 10, 300, out=io.StringIO())
    assert status_seen == 200 and len(calls) == 3 and clock.slept == [1.0, 2.0]
    _answering(smoke, monkeypatch, [(status, {"error": "busy"})])
    with pytest.raises(smoke.SmokeError, match=f"GET /health returned {status}"):
        smoke.run(smoke.build_parser().parse_args(
            ["--url", "https://x.net", "--health-only", "--wait", "30"]), {}, out=io.StringIO())


@pytest.mark.parametrize("status", [400, 401, 403, 405])
def test_smoke_fails_when_health_is_not_a_200(monkeypatch, status):
    """A /health the platform refuses (access restrictions, an identity provider in front) is no
    proof the deployment works: failed at once, not waited out."""
    smoke = load_smoke_module()
    clock, calls = _answering(smoke, monkeypatch, [(status, {"error": "no"})])
    with pytest.raises(smoke.SmokeError, match=f"GET /health returned {status}"):
        smoke.run(smoke.build_parser().parse_args(
            ["--url", "https://x.net", "--health-only", "--wait", "300"]), {}, out=io.StringIO())
    assert len(calls) == 1 and clock.slept == []


def test_smoke_fails_when_embeddings_answer_without_credentials(monkeypatch):
    smoke = load_smoke_module()
    seen = []

    def request_json(method, url, headers, body, timeout):
        seen.append((method, url.split("?")[0], dict(headers)))
        if url.endswith("/health"):
            return 200, {"status": "ok"}, 0.01
        if "/info" in url:
            return 200, {"model_name": "m"}, 0.01
        return 200, {"data": [{"embedding": [0.1]}]}, 0.01    # with or without a key

    monkeypatch.setattr(smoke, "request_json", request_json)
    with pytest.raises(smoke.SmokeError, match="without credentials returned 200"):
        smoke.run(smoke.build_parser().parse_args(["--url", "https://x.net"]),
                  {"EMBEDDINGS_API_KEY": "k" * 32}, out=io.StringIO())
    assert ("POST", "https://x.net/embeddings", {}) in seen


def test_smoke_refuses_non_finite_embeddings():
    """json.loads takes NaN and Infinity: a vector holding them is no embedding."""
    smoke = load_smoke_module()
    assert smoke.check_embeddings_payload({"data": [{"embedding": [0.5, -1]}]}) == 2
    for bad in (float("nan"), float("inf")):
        with pytest.raises(smoke.SmokeError, match="non-finite"):
            smoke.check_embeddings_payload({"data": [{"embedding": [0.5, bad]}]})


def test_the_lock_takes_311_312_and_313(tmp_path, monkeypatch):
    """The documented usage: run with 3.11, given a 3.12 and a 3.13; without a 3.12 (what
    infra/ deploys) it refuses. The script's Python is 3.11 here whatever runs the suite."""
    import types

    lock = _lock_script()
    frozen = {"py311": ((3, 11), {"a": "1"}), "py312": ((3, 12), {"a": "1"}),
              "py313": ((3, 13), {"a": "2"}), "py314": ((3, 14), {"a": "2"})}
    monkeypatch.setattr(lock, "freeze", lambda python: frozen[python])
    monkeypatch.setattr(lock, "ROOT", tmp_path)
    monkeypatch.setattr(lock, "sys", types.SimpleNamespace(
        version_info=(3, 11, 7), executable="py311",
        argv=["lock_requirements.py", "py312", "py313"]))
    lock.main()
    lines = (tmp_path / "requirements.lock").read_text().splitlines()
    assert lines[-2:] == ['a==1; python_version < "3.13"', 'a==2; python_version >= "3.13"']
    lock.sys.argv = ["lock_requirements.py", "py313", "py314"]
    with pytest.raises(SystemExit, match="give Python 3.12 too"):
        lock.main()


def test_the_lock_is_resolved_without_the_old_lock(tmp_path, monkeypatch):
    lock = _lock_script()
    (tmp_path / "requirements.txt").write_text("-c requirements.lock\nfoo>=1\n")
    monkeypatch.setattr(lock, "ROOT", tmp_path)
    seen = {}

    def run(cmd, **kw):
        if "-r" in cmd:
            seen["requirements"] = open(cmd[cmd.index("-r") + 1]).read()
        out = "foo==1.2\n" if "freeze" in cmd else "3 11\n" if "-c" in cmd else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")
    monkeypatch.setattr(lock.subprocess, "run", run)
    assert lock.freeze("python3.11") == ((3, 11), {"foo": "1.2"})
    assert seen["requirements"] == "foo>=1\n"


def test_bicep_types_keep_what_the_infra_checks_need(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("extract_bicep_types",
                                                  ROOT / "scripts" / "extract_bicep_types.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    types = [
        {"$type": "StringType"},                                                    # 0
        {"$type": "IntegerType", "minValue": 1, "maxValue": 10},                    # 1
        {"$type": "ObjectType", "name": "Props", "properties": {
            "name": {"type": {"$ref": "#/0"}, "flags": 1},                         # required
            "id": {"type": {"$ref": "#/0"}, "flags": 2},                           # read-only
            "count": {"type": {"$ref": "#/1"}, "flags": 0}}},                      # 2
        {"$type": "ResourceType", "name": "Microsoft.Web/sites@2024-04-01", "body": {"$ref": "#/2"}},
        {"$type": "ResourceType", "name": "Microsoft.Web/serverfarms@2024-04-01", "body": {"$ref": "#/2"}},
    ]
    repo = tmp_path / "bicep-types-az"
    git_repo(repo, {"generated/web/microsoft.web/2024-04-01/types.json": json.dumps(types)})
    infra = tmp_path / "infra"
    (infra / "modules").mkdir(parents=True)
    (infra / "main.bicep").write_text("resource site 'Microsoft.Web/sites@2024-04-01' = {}\n")
    (infra / "modules" / "plan.bicep").write_text(
        "resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {}\n")
    monkeypatch.setattr(ex, "INFRA", infra)
    monkeypatch.setattr(ex, "ROOT", tmp_path)
    out = tmp_path / "bicep_types.json"
    assert ex.main(["--repo", str(repo), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["resources"]) == {"Microsoft.Web/sites@2024-04-01",
                                     "Microsoft.Web/serverfarms@2024-04-01"}
    body = doc["types"][doc["types"][doc["resources"]["Microsoft.Web/sites@2024-04-01"]]["body"]]
    props = body["properties"]
    assert props["id"]["type"] == "readonly" and props["name"]["type"] == "string"
    assert doc["types"][props["count"]["type"]] == {"kind": "int", "minValue": 1, "maxValue": 10}
