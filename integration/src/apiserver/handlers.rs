//! The REST verbs on stored objects: create, get, list, update, patch,
//! delete and deletecollection (watch is in `watch.rs`).

use std::time::SystemTime;

use base64::Engine as _;
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::{Value, json};

use super::body::{self, ResponseBody};
use super::decode::{FieldValidation, decode};
use super::defaults::{mark_deleted, name_suffix, normalize, prepare_create, prepare_update};
use super::escalation;
use super::media::{OBJECT_REPRESENTATIONS, Representation, negotiate};
use super::patch::{PatchType, json_patch, merge_patch, strategic_merge_patch};
use super::protobuf;
use super::resources::ResourceKind;
use super::router::Ctx;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, delete_success};
use super::store::ObjectKey;
use super::table::{IncludeObject, content_type, table};
use super::validate::{validate, validate_update};
use super::watch;

/// Namespaces a real apiserver refuses to delete.
const PROTECTED_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// What a resource path names.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub kind: ResourceKind,
    /// The namespace for namespaced kinds; `None` for all namespaces (or a
    /// cluster-scoped kind).
    pub namespace: Option<String>,
    /// The object name, for item paths.
    pub name: Option<String>,
}

impl Target {
    pub fn collection(kind: ResourceKind, namespace: Option<&str>) -> Self {
        Self { kind, namespace: namespace.map(str::to_string), name: None }
    }

    pub fn item(kind: ResourceKind, namespace: &str, name: &str) -> Self {
        Self { kind, namespace: Some(namespace.to_string()), name: Some(name.to_string()) }
    }

    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }

    fn key(&self, name: &str) -> ObjectKey {
        ObjectKey::new(self.kind, if self.kind.namespaced() { self.ns() } else { "" }, name)
    }
}

/// Serves a request on a collection or an object.
pub(crate) fn serve(ctx: &Ctx<'_>, target: &Target) -> Result<Response<ResponseBody>, ApiError> {
    let namespaced_collection = target.kind.namespaced() && target.namespace.is_some();
    match (ctx.method.clone(), target.name.as_deref()) {
        (Method::GET | Method::HEAD, None) if ctx.query.flag("watch") => watch::serve(ctx, target),
        (Method::GET | Method::HEAD, None) => list(ctx, target),
        (Method::GET | Method::HEAD, Some(name)) => get(ctx, target, name),
        (Method::POST, None) if namespaced_collection || !target.kind.namespaced() => create(ctx, target),
        (Method::PUT, Some(name)) => update(ctx, target, name),
        (Method::PATCH, Some(name)) => patch(ctx, target, name),
        (Method::DELETE, Some(name)) => delete(ctx, target, name),
        (Method::DELETE, None)
            if target.kind.verbs().contains(&"deletecollection")
                && (namespaced_collection || !target.kind.namespaced()) =>
        {
            delete_collection(ctx, target)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn dry_run(ctx: &Ctx<'_>) -> Result<bool, ApiError> {
    match ctx.query.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
        ))),
    }
}

fn media_type(ctx: &Ctx<'_>) -> String {
    ctx.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The request body as JSON (sent as JSON, YAML or protobuf).
pub(crate) fn body_value(ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    match media_type(ctx).as_str() {
        "application/json" => serde_json::from_slice(&ctx.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}"))),
        "application/yaml" => serde_yaml::from_slice(&ctx.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}"))),
        protobuf::PROTOBUF => protobuf::decode(&ctx.body),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {other:?})"
        ))),
    }
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or_default()
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert(field.to_string(), value);
    }
}

/// Makes the body's namespace agree with the request's, as kube-apiserver's
/// `EnsureObjectNamespaceMatchesRequestNamespace` does.
fn settle_namespace(target: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let request_ns = if target.kind.namespaced() { target.ns() } else { "" };
    let obj_ns = meta_str(obj, "namespace").to_string();
    if obj_ns == request_ns {
        return Ok(());
    }
    if obj_ns.is_empty() || request_ns.is_empty() {
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        set_meta(obj, "namespace", json!(request_ns));
        if request_ns.is_empty()
            && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.remove("namespace");
        }
        return Ok(());
    }
    Err(ApiError::bad_request(
        "the namespace of the provided object does not match the namespace sent on the request",
    ))
}

/// Adds a `Warning: 299` header per warning.
pub(crate) fn warning_headers(resp: &mut Response<ResponseBody>, warnings: &[String]) {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(http::header::WARNING, v);
        }
    }
}

fn representation(ctx: &Ctx<'_>) -> Result<Representation, ApiError> {
    negotiate(ctx.headers, &OBJECT_REPRESENTATIONS).ok_or_else(ApiError::not_acceptable)
}

/// An object response: the object, or a one-row Table.
fn render_object(
    ctx: &Ctx<'_>,
    kind: ResourceKind,
    status: StatusCode,
    obj: &Value,
) -> Result<Response<ResponseBody>, ApiError> {
    match representation(ctx)? {
        Representation::Table(v) => {
            let meta = json!({ "resourceVersion": meta_str(obj, "resourceVersion") });
            let include = IncludeObject::parse(ctx.query.get("includeObject"));
            let t = table(kind, v, std::slice::from_ref(obj), meta, include, SystemTime::now());
            Ok(body::json_as(status, &content_type(v), &t))
        }
        _ => Ok(body::json(status, obj)),
    }
}

/// The label and field selectors of a list or watch (400 if malformed or
/// using an unsupported field).
pub(crate) fn selectors(
    ctx: &Ctx<'_>,
    kind: ResourceKind,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(ctx.query.get("fieldSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    for f in fields.fields() {
        if !matches!(f, "metadata.name" | "metadata.namespace") && !kind.selectable_fields().contains(&f) {
            return Err(ApiError::bad_request(format!("field label not supported: {f}")));
        }
    }
    Ok((labels, fields))
}

fn field_value(obj: &Value, field: &str) -> String {
    // Events' `source` selects `source.component`.
    let field = if field == "source" { "source.component" } else { field };
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if field == "spec.hostNetwork" || field == "spec.unschedulable" => "false".to_string(),
        _ => String::new(),
    }
}

/// Whether an object passes a list's or watch's selectors.
pub(crate) fn matches(obj: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    labels.matches_object(obj) && fields.matches(|f| field_value(obj, f))
}

/// A list item as a real apiserver sends it: without `kind`/`apiVersion`.
fn list_item(obj: &Value) -> Value {
    let mut item = obj.clone();
    if let Some(m) = item.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    item
}

fn object_key_string(obj: &Value) -> String {
    format!("{}/{}", meta_str(obj, "namespace"), name_of(obj))
}

fn encode_continue(rv: u64, start: &str) -> String {
    let token = json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": start });
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    v.get("start").and_then(Value::as_str).map(str::to_string).ok_or_else(bad)
}

fn list(ctx: &Ctx<'_>, target: &Target) -> Result<Response<ResponseBody>, ApiError> {
    let kind = target.kind;
    let (labels, fields) = selectors(ctx, kind)?;
    let limit = ctx.query.int("limit").map_err(ApiError::bad_request)?.filter(|l| *l > 0);
    let start = ctx.query.non_empty("continue").map(decode_continue).transpose()?;
    let scope = target.namespace.as_deref().filter(|_| kind.namespaced());
    let (items, rv) = ctx.state.store.list(kind, scope);
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|o| matches(o, &labels, &fields))
        .filter(|o| start.as_deref().is_none_or(|s| object_key_string(o).as_str() >= s))
        .collect();
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok())
        && items.len() > limit
    {
        let rest = items.split_off(limit);
        meta["continue"] = json!(encode_continue(rv, &object_key_string(&rest[0])));
        if ctx.query.non_empty("labelSelector").is_none() && ctx.query.non_empty("fieldSelector").is_none() {
            meta["remainingItemCount"] = json!(rest.len());
        }
    }
    match representation(ctx)? {
        Representation::Table(v) => {
            let include = IncludeObject::parse(ctx.query.get("includeObject"));
            let t = table(kind, v, &items, meta, include, SystemTime::now());
            Ok(body::json_as(StatusCode::OK, &content_type(v), &t))
        }
        _ => Ok(body::json(
            StatusCode::OK,
            &json!({
                "kind": kind.list_kind(),
                "apiVersion": kind.api_version(),
                "metadata": meta,
                "items": items.iter().map(list_item).collect::<Vec<_>>(),
            }),
        )),
    }
}

fn get(ctx: &Ctx<'_>, target: &Target, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    let obj = ctx
        .state
        .store
        .get(&target.key(name))
        .ok_or_else(|| ApiError::not_found(&target.kind.qualified_plural(), name))?;
    render_object(ctx, target.kind, StatusCode::OK, &obj)
}

fn create(ctx: &Ctx<'_>, target: &Target) -> Result<Response<ResponseBody>, ApiError> {
    let kind = target.kind;
    let dry = dry_run(ctx)?;
    let validation = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let mut obj = body_value(ctx)?;
    let warnings = decode(kind, &obj, validation)?;
    normalize(kind, &mut obj);
    settle_namespace(target, &mut obj)?;
    if name_of(&obj).is_empty() {
        let prefix = meta_str(&obj, "generateName").to_string();
        if !prefix.is_empty() {
            set_meta(&mut obj, "name", json!(format!("{prefix}{}", name_suffix())));
        }
    }
    let ns = if kind.namespaced() { target.ns().to_string() } else { String::new() };
    escalation::confirm(ctx.state, &ctx.identity.user, kind, &ns, &obj)?;
    validate(kind, &obj)?;
    let pod_ip = if kind == ResourceKind::Pod { ctx.state.next_pod_ip() } else { String::new() };
    prepare_create(kind, &mut obj, &ns, &pod_ip, SystemTime::now());
    let key = ObjectKey::new(kind, &ns, name_of(&obj));
    let created = ctx.state.store.create(key, obj, dry)?;
    let mut resp = render_object(ctx, kind, StatusCode::CREATED, &created)?;
    warning_headers(&mut resp, &warnings);
    Ok(resp)
}

/// The checks and server-side filling shared by update and patch.
fn finish_update(
    kind: ResourceKind,
    name: &str,
    current: &Value,
    mut next: Value,
) -> Result<Value, ApiError> {
    let plural = &kind.qualified_plural();
    if name_of(&next) != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            name_of(&next)
        )));
    }
    let rv = meta_str(&next, "resourceVersion");
    if !rv.is_empty() && rv != meta_str(current, "resourceVersion") {
        return Err(ApiError::conflict(plural, name));
    }
    let uid = meta_str(&next, "uid");
    if !uid.is_empty() && uid != meta_str(current, "uid") {
        return Err(ApiError::conflict_because(
            plural,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(current, "uid")
            ),
        ));
    }
    prepare_update(kind, &mut next, current);
    validate_update(kind, current, &next)?;
    Ok(next)
}

fn update(ctx: &Ctx<'_>, target: &Target, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    let kind = target.kind;
    let dry = dry_run(ctx)?;
    let validation = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let mut obj = body_value(ctx)?;
    let warnings = decode(kind, &obj, validation)?;
    normalize(kind, &mut obj);
    settle_namespace(target, &mut obj)?;
    escalation::confirm(ctx.state, &ctx.identity.user, kind, &target.key(name).namespace, &obj)?;
    let updated =
        ctx.state.store.update(&target.key(name), dry, |current| finish_update(kind, name, current, obj))?;
    let mut resp = render_object(ctx, kind, StatusCode::OK, &updated)?;
    warning_headers(&mut resp, &warnings);
    Ok(resp)
}

fn patch(ctx: &Ctx<'_>, target: &Target, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    let kind = target.kind;
    let dry = dry_run(ctx)?;
    let validation = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let patch_type = PatchType::from_content_type(
        ctx.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
    )?;
    if patch_type == PatchType::Apply {
        return Err(ApiError::unsupported_media_type(
            "server-side apply (application/apply-patch+yaml) is not implemented by the test apiserver",
        ));
    }
    let patch: Value = serde_json::from_slice(&ctx.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let apply = |current: &Value| -> Result<Value, ApiError> {
        let mut obj = current.clone();
        match patch_type {
            PatchType::Json => json_patch(&mut obj, &patch)?,
            PatchType::Merge => merge_patch(&mut obj, &patch),
            PatchType::Strategic | PatchType::Apply => strategic_merge_patch(&mut obj, &patch)?,
        }
        Ok(obj)
    };
    let key = target.key(name);
    if let Some(current) = ctx.state.store.get(&key)
        && let Ok(mut next) = apply(&current)
    {
        // Checked on the patched object outside the store's lock (the check
        // reads the store); failures to patch are reported below.
        normalize(kind, &mut next);
        escalation::confirm(ctx.state, &ctx.identity.user, kind, &key.namespace, &next)?;
    }
    let mut warnings = Vec::new();
    let updated = ctx.state.store.update(&key, dry, |current| {
        let mut obj = apply(current)?;
        warnings = decode(kind, &obj, validation)?;
        normalize(kind, &mut obj);
        if kind.namespaced() && meta_str(&obj, "namespace") != target.ns() {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        finish_update(kind, name, current, obj)
    })?;
    let mut resp = render_object(ctx, kind, StatusCode::OK, &updated)?;
    warning_headers(&mut resp, &warnings);
    Ok(resp)
}

/// The parts of `DeleteOptions` this server acts on.
struct DeleteOptions {
    uid: Option<String>,
    resource_version: Option<String>,
    grace_seconds: Option<i64>,
    dry_run: bool,
}

fn delete_options(ctx: &Ctx<'_>) -> Result<DeleteOptions, ApiError> {
    let body: Value = if ctx.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&ctx.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let precondition =
        |f: &str| body.pointer(&format!("/preconditions/{f}")).and_then(Value::as_str).map(str::to_string);
    let policy = body.get("propagationPolicy").and_then(Value::as_str).or(ctx.query.get("propagationPolicy"));
    if let Some(p) = policy.filter(|p| !matches!(*p, "Orphan" | "Background" | "Foreground")) {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    let body_dry = body.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|v| v == "All"));
    let grace = match body.get("gracePeriodSeconds").and_then(Value::as_i64) {
        Some(g) => Some(g),
        None => ctx.query.int("gracePeriodSeconds").map_err(ApiError::bad_request)?,
    };
    Ok(DeleteOptions {
        uid: precondition("uid"),
        resource_version: precondition("resourceVersion"),
        grace_seconds: grace,
        dry_run: dry_run(ctx)? || body_dry,
    })
}

fn delete_one(ctx: &Ctx<'_>, target: &Target, name: &str, opts: &DeleteOptions) -> Result<Value, ApiError> {
    let kind = target.kind;
    if kind == ResourceKind::Namespace && PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            "",
            "namespaces",
            name,
        ));
    }
    let now = SystemTime::now();
    let deleted = ctx.state.store.delete(&target.key(name), opts.dry_run, |current| {
        let failed = |what: &str, want: &str, have: &str| {
            ApiError::conflict_because(
                &kind.qualified_plural(),
                name,
                &format!(
                    "Precondition failed: {what} in precondition: {want}, {what} in object meta: {have}"
                ),
            )
        };
        if let Some(uid) = opts.uid.as_deref().filter(|u| *u != meta_str(current, "uid")) {
            return Err(failed("UID", uid, meta_str(current, "uid")));
        }
        if let Some(rv) =
            opts.resource_version.as_deref().filter(|r| *r != meta_str(current, "resourceVersion"))
        {
            return Err(failed("ResourceVersion", rv, meta_str(current, "resourceVersion")));
        }
        let mut last = current.clone();
        match kind {
            ResourceKind::Pod => {
                let default_grace =
                    current.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64);
                mark_deleted(&mut last, now, opts.grace_seconds.or(default_grace).unwrap_or(30));
            }
            ResourceKind::Namespace => {
                mark_deleted(&mut last, now, 0);
                last["status"] = json!({ "phase": "Terminating" });
            }
            _ => {}
        }
        Ok(last)
    })?;
    if !opts.dry_run {
        match kind {
            ResourceKind::Pod => {
                ctx.state.logs.pod_gone(target.ns(), name);
                ctx.state.files.pod_gone(target.ns(), name);
            }
            ResourceKind::Namespace => {
                ctx.state.logs.namespace_gone(name);
                ctx.state.files.namespace_gone(name);
            }
            _ => {}
        }
    }
    Ok(deleted)
}

fn delete(ctx: &Ctx<'_>, target: &Target, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    let opts = delete_options(ctx)?;
    let deleted = delete_one(ctx, target, name, &opts)?;
    if target.kind.deleted_at_once() {
        // Gone at once, so the apiserver answers with a Status.
        Ok(body::json(
            StatusCode::OK,
            &delete_success(&target.kind.qualified_plural(), name, meta_str(&deleted, "uid")),
        ))
    } else {
        // Graceful deletion: the object, marked for deletion.
        render_object(ctx, target.kind, StatusCode::OK, &deleted)
    }
}

fn delete_collection(ctx: &Ctx<'_>, target: &Target) -> Result<Response<ResponseBody>, ApiError> {
    let opts = delete_options(ctx)?;
    let (labels, fields) = selectors(ctx, target.kind)?;
    let (items, _) = ctx.state.store.list(target.kind, Some(target.ns()));
    let mut deleted = Vec::new();
    for obj in items.iter().filter(|o| matches(o, &labels, &fields)) {
        match delete_one(ctx, target, name_of(obj), &opts) {
            Ok(d) => deleted.push(list_item(&d)),
            // Deleted meanwhile by someone else: fine for a collection delete.
            Err(e) if e.code == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok(body::json(
        StatusCode::OK,
        &json!({
            "kind": target.kind.list_kind(),
            "apiVersion": target.kind.api_version(),
            "metadata": { "resourceVersion": ctx.state.store.current_rv().to_string() },
            "items": deleted,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(7, "default/b");
        assert_eq!(decode_continue(&t).expect("token"), "default/b");
        assert!(decode_continue("nonsense!").is_err());
    }

    #[test]
    fn field_values_follow_kube() {
        let pod =
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}});
        assert_eq!(field_value(&pod, "metadata.name"), "p");
        assert_eq!(field_value(&pod, "status.phase"), "Running");
        assert_eq!(field_value(&pod, "spec.hostNetwork"), "false");
        assert_eq!(field_value(&pod, "spec.restartPolicy"), "");
    }
}
