//! The HTTP contract, `orchestrator/nxd/openapi.yaml` (OpenAPI 3.1), checked against nxd
//! itself: its paths and methods are exactly the route table's (`http_api::table`, which the
//! router is built from), each operation names its path parameters and documents its errors,
//! every `$ref` resolves, and its schemas are exactly what the wire types serialise as
//! (schemars reads the same serde attributes serde does). A route or a field changed without
//! the document fails here. After changing a wire type, `NX_BLESS_OPENAPI=1 cargo test -p nxd
//! openapi` rewrites the document's schemas; review the diff.

use nx_api::access::{
    AddKey, CreateToken, CreatedToken, HostKeyView, KeyRemoved, KeyView, SandboxSettings,
    TokenRemoved, TokenView,
};
use nx_api::domains::{AddDomain, DomainRemoved, DomainView};
use nx_api::volumes::{CreateVolume, VolumeBackup, VolumeRemoved, VolumeRestored, VolumeView};
use nx_api::{
    ArtifactInfo, BackupInfo, BackupRemoved, BlobDigests, BundleInfo, CreateSandbox, DatabaseInfo,
    DeploymentRemoved, DeploymentView, ErrorBody, Health, PromoteRequest, PushRequest, RestoreInfo,
    SandboxRemoved, SandboxView, TaskEvent, TaskRequest,
};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;

const METHODS: [&str; 4] = ["get", "put", "post", "delete"];

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml")
}

fn document() -> Value {
    let text = std::fs::read_to_string(path()).expect("openapi.yaml");
    serde_yaml::from_str(&text).expect("openapi.yaml is YAML")
}

/// The JSON Schemas of every request and answer body, under `#/components/schemas/`.
fn wire_schemas() -> Map<String, Value> {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    macro_rules! bodies {
        ($($t:ty),* $(,)?) => { $( generator.subschema_for::<$t>(); )* };
    }
    bodies!(
        Health,
        ArtifactInfo,
        BlobDigests,
        BundleInfo,
        nx_artifact::bundle::BundleManifest,
        PushRequest,
        DeploymentView,
        DeploymentRemoved,
        SandboxView,
        CreateSandbox,
        SandboxRemoved,
        DatabaseInfo,
        BackupInfo,
        BackupRemoved,
        RestoreInfo,
        TaskRequest,
        TaskEvent,
        PromoteRequest,
        TokenView,
        CreateToken,
        CreatedToken,
        TokenRemoved,
        KeyView,
        AddKey,
        KeyRemoved,
        SandboxSettings,
        HostKeyView,
        AddDomain,
        DomainView,
        DomainRemoved,
        CreateVolume,
        VolumeView,
        VolumeBackup,
        VolumeRestored,
        VolumeRemoved,
        nx_api::usage::UsageReport,
        ErrorBody,
    );
    generator.take_definitions(true)
}

/// (METHOD, path) of every operation of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .map(|method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(target)) => found.push(target),
                    _ => refs(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[test]
fn the_document_has_exactly_the_routes_of_the_route_table() {
    let doc = document();
    let routed: BTreeSet<(String, String)> = crate::http_api::table()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    let documented = operations(&doc);
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "openapi.yaml and nxd's routes differ:\n  routed, not documented: {missing:?}\n  documented, not routed: {extra:?}"
    );
}

#[test]
fn every_operation_names_its_parameters_and_documents_success_and_errors() {
    let doc = document();
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let at = format!("{method} {path}");
        assert!(op["summary"].is_string(), "{at}: no summary");
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|code| code.starts_with('2')),
            "{at}: no success response"
        );
        assert_eq!(
            op["responses"]["default"]["$ref"], "#/components/responses/Error",
            "{at}: errors (ErrorBody) not documented"
        );
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().expect("a name"))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(in_path, declared, "{at}: path parameters");
    }
}

#[test]
fn the_documents_schemas_are_the_wire_types() {
    let mut doc = document();
    let generated = wire_schemas();
    if std::env::var_os("NX_BLESS_OPENAPI").is_some() {
        doc["components"]["schemas"] = Value::Object(generated.clone());
        let text = serde_yaml::to_string(&doc).expect("YAML");
        std::fs::write(path(), text).expect("write openapi.yaml");
    }
    let documented = doc["components"]["schemas"].as_object().expect("schemas");
    let differ: Vec<&String> = generated
        .keys()
        .chain(documented.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|name| generated.get(*name) != documented.get(*name))
        .collect();
    assert!(
        differ.is_empty(),
        "openapi.yaml's schemas differ from the wire types for {differ:?}: if the change is meant, run NX_BLESS_OPENAPI=1 cargo test -p nxd openapi and review the diff"
    );
    // Every reference resolves, and every schema is used.
    let mut found = Vec::new();
    refs(&doc, &mut found);
    for target in &found {
        let pointer = target.strip_prefix('#').expect("a local $ref");
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
    for name in documented.keys() {
        let target = format!("#/components/schemas/{name}");
        assert!(
            found.contains(&target.as_str()),
            "schema {name} is never used"
        );
    }
}
