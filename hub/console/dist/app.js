"use strict";
// Ferry web console. Plain TypeScript, no framework and no dependencies:
// compiled by tsc into dist/app.js, which the hub embeds and serves at
// /ui/app.js. Pages are built with DOM calls only (never from HTML text), so
// nothing a cluster or agent reports can become markup; the hub's CSP
// allows no inline script and no eval.
//
// Routes (the part after #): /signin, /clusters, /clusters/NAME, /register,
// /access, /kubeconfig[/NAME]. Data comes from /ui/api/ (see
// hub/src/console/api.rs); the cluster list stays live through one
// EventSource on /ui/api/clusters/events.
let who = null;
const clusters = new Map();
let events = null;
let live = false;
let render = null;
/** Counts page changes, so a late answer never draws over a newer page. */
let routeSeq = 0;
// ---------------------------------------------------------------- helpers
function $(id) {
    const e = document.getElementById(id);
    if (!e)
        throw new Error(`missing #${id}`);
    return e;
}
/** Builds an element: h("a", {href: "#/"}, "text", child...). */
function h(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
        if (typeof v === "function")
            e.addEventListener(k.replace(/^on/, ""), v);
        else if (v === true)
            e.setAttribute(k, "");
        else if (v !== false)
            e.setAttribute(k, v);
    }
    for (const c of children)
        if (c !== null && c !== undefined && c !== false)
            e.append(c);
    return e;
}
function say(text, bad = false) {
    const s = $("status");
    s.classList.toggle("bad", bad);
    s.textContent = text;
    window.setTimeout(() => {
        if (s.textContent === text)
            s.textContent = "";
    }, 6000);
}
function ago(unix) {
    if (!unix)
        return "never";
    const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
    if (s < 60)
        return `${s}s ago`;
    if (s < 3600)
        return `${Math.floor(s / 60)}m ago`;
    if (s < 86400)
        return `${Math.floor(s / 3600)}h ago`;
    return `${Math.floor(s / 86400)}d ago`;
}
function when(unix) {
    return unix ? new Date(unix * 1000).toLocaleString() : "—";
}
function timeEl(unix, relative = true) {
    const t = h("time", { datetime: unix ? new Date(unix * 1000).toISOString() : "" }, relative ? ago(unix) : when(unix));
    if (relative && unix) {
        t.dataset.ago = String(unix);
        t.title = when(unix);
    }
    return t;
}
function phaseEl(phase) {
    const label = { NotReady: "Not ready" };
    return h("span", { class: "phase", "data-phase": phase }, label[phase] ?? phase);
}
function labelsEl(labels) {
    const keys = Object.keys(labels).sort();
    if (!keys.length)
        return h("span", { class: "muted" }, "—");
    return h("span", {}, ...keys.map((k) => h("span", { class: "label" }, labels[k] ? `${k}=${labels[k]}` : k)));
}
function nodesText(c) {
    if (!c.nodes)
        return "—";
    const total = c.nodes.ready + c.nodes.notReady;
    return `${c.nodes.ready}/${total} ready`;
}
class ApiError extends Error {
    constructor(status, message) {
        super(message);
        this.status = status;
    }
}
/** Calls /ui/api/PATH; state changes carry the session's CSRF token. */
async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined)
        headers["Content-Type"] = "application/json";
    if (method !== "GET" && who)
        headers["X-CSRF-Token"] = who.csrf;
    const r = await fetch(`/ui/api/${path}`, {
        method,
        headers,
        credentials: "same-origin",
        cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let data = null;
    try {
        data = text ? JSON.parse(text) : null;
    }
    catch {
        data = { error: text };
    }
    if (!r.ok) {
        const message = data?.error ?? `${r.status} ${r.statusText}`;
        if (r.status === 401 && path !== "session")
            signedOut("Your session has ended: sign in again.");
        throw new ApiError(r.status, message);
    }
    return data;
}
/** Saves text as a file through the browser's download. */
function download(name, text, type = "application/yaml") {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = h("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 10000);
}
/** A command in a code block, with a copy button. */
function command(text, id, label) {
    const pre = h("pre", { id, tabindex: "0", "aria-label": label }, text);
    const copy = h("button", {
        type: "button",
        class: "secondary",
        "aria-label": `Copy: ${label}`,
        onclick: async () => {
            try {
                await navigator.clipboard.writeText(text);
                say("Copied to the clipboard.");
            }
            catch {
                const range = document.createRange();
                range.selectNodeContents(pre);
                const sel = window.getSelection();
                sel?.removeAllRanges();
                sel?.addRange(range);
                say("Selected: press Ctrl+C (⌘C) to copy.");
            }
        },
    }, "Copy");
    return h("div", { class: "cmd" }, pre, copy);
}
function confirmAction(title, text, ok) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = ok;
    return new Promise((resolve) => {
        dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
        dialog.returnValue = "";
        dialog.showModal();
        $("confirm-cancel").focus();
    });
}
function field(id, label, input, hint) {
    if (hint)
        input.setAttribute("aria-describedby", `${id}-hint`);
    return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null);
}
function radios(name, legend, options, checked) {
    return h("fieldset", {}, h("legend", {}, legend), ...options.map(([value, text]) => h("label", {}, h("input", { type: "radio", name, value, id: `${name}-${value}`, checked: value === checked }), text)));
}
function formValue(form, name) {
    const v = new FormData(form).get(name);
    return typeof v === "string" ? v.trim() : "";
}
function clusterOptions(selected, withAll = false) {
    const names = [...clusters.keys()].sort();
    const opts = names.map((n) => h("option", { value: n, selected: n === selected }, n));
    if (withAll)
        opts.unshift(h("option", { value: "*", selected: selected === "*" }, "* (every cluster)"));
    return opts;
}
const TTLS = [
    ["3600", "1 hour"],
    ["86400", "1 day"],
    ["604800", "7 days"],
    ["2592000", "30 days"],
    ["7776000", "90 days"],
];
function ttlSelect(id, selected) {
    return h("select", { id, name: "ttl" }, ...TTLS.map(([v, t]) => h("option", { value: v, selected: v === selected }, t)));
}
// ------------------------------------------------------------ live events
function startEvents() {
    if (events)
        return;
    const es = new EventSource("/ui/api/clusters/events");
    events = es;
    const update = (ev) => {
        const c = JSON.parse(ev.data);
        if (ev.type === "deleted")
            clusters.delete(c.name);
        else
            clusters.set(c.name, { ...clusters.get(c.name), ...c, replicas: c.replicas.length ? c.replicas : clusters.get(c.name)?.replicas ?? [] });
        rerender();
    };
    es.addEventListener("added", update);
    es.addEventListener("modified", update);
    es.addEventListener("deleted", update);
    es.addEventListener("bookmark", () => setLive(true));
    es.addEventListener("open", () => setLive(true));
    es.addEventListener("reset", () => {
        stopEvents();
        clusters.clear();
        startEvents();
    });
    es.addEventListener("signedout", () => signedOut("Your session has ended: sign in again."));
    es.addEventListener("error", () => {
        setLive(false);
        if (es.readyState === EventSource.CLOSED) {
            // The hub refused the stream: find out whether we are signed out.
            stopEvents();
            window.setTimeout(async () => {
                try {
                    who = await api("GET", "session");
                    startEvents();
                }
                catch {
                    /* signedOut() has run for a 401; otherwise try again later */
                    if (who)
                        window.setTimeout(startEvents, 5000);
                }
            }, 2000);
        }
    });
}
function stopEvents() {
    events?.close();
    events = null;
    setLive(false);
}
function setLive(on) {
    live = on;
    const el = document.getElementById("live");
    if (el) {
        el.textContent = on ? "Live" : "Reconnecting…";
        el.classList.toggle("off", !on);
    }
}
function rerender() {
    render?.();
}
// -------------------------------------------------------------- the shell
function signedOut(message) {
    who = null;
    stopEvents();
    clusters.clear();
    $("nav").hidden = true;
    $("who").hidden = true;
    if (message)
        say(message, true);
    if (location.hash !== "#/signin")
        location.hash = "#/signin";
    else
        route();
}
function signedIn(w) {
    who = w;
    $("nav").hidden = false;
    $("who").hidden = false;
    $("who-name").textContent = `${w.user}${w.admin ? " (admin)" : ""}`;
    for (const e of document.querySelectorAll("[data-admin]"))
        e.hidden = !w.admin;
    startEvents();
}
function page(title, ...children) {
    const main = $("main");
    main.replaceChildren(...children.filter((c) => !!c));
    document.title = `${title} · Ferry console`;
}
function route() {
    const path = location.hash.replace(/^#/, "") || "/clusters";
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    render = null;
    routeSeq++;
    if (!who && parts[0] !== "signin") {
        location.hash = "#/signin";
        return;
    }
    for (const a of document.querySelectorAll("nav a")) {
        if (a.dataset.page === parts[0])
            a.setAttribute("aria-current", "page");
        else
            a.removeAttribute("aria-current");
    }
    switch (parts[0]) {
        case "signin":
            if (who) {
                location.hash = "#/clusters";
                return;
            }
            signInPage();
            break;
        case "register":
            registerPage();
            break;
        case "access":
            void accessPage();
            break;
        case "kubeconfig":
            kubeconfigPage(parts[1] ?? "");
            break;
        case "clusters":
            if (parts[1])
                void detailPage(parts[1]);
            else
                clustersPage();
            break;
        default:
            location.hash = "#/clusters";
            return;
    }
    const heading = document.querySelector("main h1");
    if (heading) {
        heading.tabIndex = -1;
        heading.focus();
    }
}
// ---------------------------------------------------------------- sign-in
function signInPage() {
    const err = h("p", { class: "error", id: "signin-error", role: "alert" });
    const go = async (body) => {
        err.textContent = "";
        try {
            signedIn(await api("POST", "session", body));
            location.hash = "#/clusters";
        }
        catch (e) {
            err.textContent = e.message;
        }
    };
    const form = h("form", {
        id: "signin-form",
        onsubmit: (ev) => {
            ev.preventDefault();
            void go({ token: formValue(form, "token") });
        },
    }, field("token", "Hub bearer token", h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true, spellcheck: "false" }), "A token from `ferryctl token create --user YOU [--group ferry:admins] -o token`. It stays on the hub: the browser keeps only a session cookie."), h("div", { class: "actions" }, h("button", { type: "submit", id: "signin" }, "Sign in")));
    page("Sign in", h("h1", {}, "Sign in to Ferry"), h("div", { class: "grid2" }, h("section", { class: "card", "aria-labelledby": "with-token" }, h("h2", { id: "with-token" }, "With a token"), form), h("section", { class: "card", "aria-labelledby": "with-cert" }, h("h2", { id: "with-cert" }, "With your client certificate"), h("p", {}, "If your browser holds a client certificate from the hub CA (imported as a .p12), sign in with it."), h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", id: "signin-cert", onclick: () => void go({ certificate: true }) }, "Sign in with certificate")))), err);
}
// --------------------------------------------------------------- clusters
function clustersPage() {
    const body = h("div", { id: "clusters-body" });
    const draw = () => {
        const list = [...clusters.values()].sort((a, b) => a.name.localeCompare(b.name));
        if (!list.length) {
            body.replaceChildren(h("div", { class: "empty" }, "No clusters yet. ", who?.admin ? h("a", { href: "#/register" }, "Register one") : "Ask an admin for a grant", "."));
            return;
        }
        const head = ["Name", "Phase", "Version", "Nodes", "Agents", "Last seen", "Labels"];
        body.replaceChildren(h("table", { class: "cards", id: "clusters-table" }, h("caption", {}, `${list.length} cluster${list.length === 1 ? "" : "s"}, updated live`), h("thead", {}, h("tr", {}, ...head.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, ...list.map((c) => h("tr", { "data-cluster": c.name }, h("td", { "data-label": "Name" }, h("a", { href: `#/clusters/${encodeURIComponent(c.name)}` }, c.name)), h("td", { "data-label": "Phase", title: c.reason }, phaseEl(c.phase)), h("td", { "data-label": "Version" }, c.version || "—"), h("td", { "data-label": "Nodes" }, nodesText(c)), h("td", { "data-label": "Agents", class: "agents" }, String(c.agents)), h("td", { "data-label": "Last seen" }, c.connected ? "now" : timeEl(c.lastSeen)), h("td", { "data-label": "Labels" }, labelsEl(c.labels)))))));
    };
    render = draw;
    page("Clusters", h("div", { class: "bar" }, h("h1", {}, "Clusters"), h("span", { id: "live", class: live ? "live" : "live off" }, live ? "Live" : "Connecting…"), who?.admin ? h("a", { class: "button", href: "#/register", id: "register-link" }, "Register cluster") : null), body);
    draw();
}
// --------------------------------------------------------------- register
function registerPage() {
    const result = h("div", { id: "register-result" });
    const err = h("p", { class: "error", role: "alert" });
    const form = h("form", {
        id: "register-form",
        class: "card",
        onsubmit: async (ev) => {
            ev.preventDefault();
            err.textContent = "";
            const labels = {};
            for (const pair of formValue(form, "labels").split(/[,\s]+/).filter(Boolean)) {
                const [k, ...v] = pair.split("=");
                labels[k] = v.join("=");
            }
            try {
                const r = await api("POST", "clusters", {
                    name: formValue(form, "name"),
                    labels,
                    approval: formValue(form, "approval"),
                    adminGroup: formValue(form, "adminGroup"),
                });
                showRegistered(result, r);
            }
            catch (e) {
                err.textContent = e.message;
            }
        },
    }, field("name", "Cluster name", h("input", { type: "text", id: "name", name: "name", required: true, pattern: "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", autocomplete: "off", spellcheck: "false" }), "A DNS label: lower-case letters, digits and '-'. Registering a name again gives a new token (the old one stops working)."), field("labels", "Labels", h("input", { type: "text", id: "labels", name: "labels", placeholder: "env=prod, region=eu", autocomplete: "off" }), "key=value pairs, separated by commas."), radios("approval", "Approval", [["auto", "Automatic: Ready as soon as its agent connects"], ["manual", "Manual: Pending until an admin approves"]], "auto"), field("adminGroup", "Admin group (optional)", h("input", { type: "text", id: "adminGroup", name: "adminGroup", autocomplete: "off" }), "A hub group bound to cluster-admin in the child cluster."), h("div", { class: "actions" }, h("button", { type: "submit", id: "register" }, "Register")), err);
    page("Register a cluster", h("h1", {}, "Register a cluster"), form, result);
}
function showRegistered(el, r) {
    const name = r.cluster.name;
    const apply = `kubectl apply -f ${r.manifestUrl}`;
    const curl = `curl -fsS --cacert ferry-hub-ca.crt ${r.manifestUrl} | kubectl apply -f -`;
    el.replaceChildren(h("section", { class: "card", "aria-labelledby": "install-title" }, h("h2", { id: "install-title" }, `Install the agent in ${name}`), h("p", {}, "Run one of these against the child cluster. The link works ", h("strong", {}, "once"), " and expires ", h("time", { id: "link-expiry" }, when(r.manifestUrlExpiresAt)), `; the bootstrap token in it expires ${when(r.tokenExpiresAt)}.`), h("h3", {}, "Where the child's machine trusts the hub's certificate"), command(apply, "apply-command", "kubectl apply command"), h("h3", {}, "Otherwise: pin the hub CA"), h("p", { class: "hint" }, "kubectl apply -f URL trusts only the system's CA store, and the hub's certificate comes from its own CA. Download the CA and fetch the manifest with curl instead:"), h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", id: "download-ca", onclick: () => download("ferry-hub-ca.crt", r.hubCaPem, "application/x-pem-file") }, "Download hub CA")), command(curl, "curl-command", "curl command"), h("h3", {}, "Or as a file"), h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", id: "download-manifest", onclick: () => download("agent.yaml", r.manifest) }, "Download agent.yaml")), command("kubectl apply -f agent.yaml", "file-command", "kubectl apply of the file"), h("p", {}, h("a", { href: "#/clusters", id: "to-clusters" }, "Watch it turn Ready on the clusters page"), " · ", h("a", { href: `#/clusters/${encodeURIComponent(name)}` }, `Open ${name}`))));
    clusters.set(name, { ...r.cluster });
    const title = document.getElementById("install-title");
    if (title) {
        title.tabIndex = -1;
        title.focus();
    }
}
// ----------------------------------------------------------------- detail
async function detailPage(name) {
    let c;
    const seq = routeSeq;
    const load = async () => {
        try {
            const got = await api("GET", `clusters/${encodeURIComponent(name)}`);
            if (seq !== routeSeq)
                return;
            c = got;
            draw();
        }
        catch (e) {
            if (seq !== routeSeq)
                return;
            page("Cluster", h("h1", {}, name), h("p", { class: "error", role: "alert" }, e.message));
        }
    };
    const act = async (action, title, text) => {
        if (!(await confirmAction(title, text, title)))
            return;
        try {
            if (action === "delete") {
                await api("DELETE", `clusters/${encodeURIComponent(name)}`);
                clusters.delete(name);
                say(`Cluster ${name} deleted.`);
                location.hash = "#/clusters";
                return;
            }
            await api("POST", `clusters/${encodeURIComponent(name)}/${action}`);
            say(`Cluster ${name}: ${action === "approve" ? "approved" : "denied"}.`);
            await load();
        }
        catch (e) {
            say(e.message, true);
        }
    };
    const draw = () => {
        const facts = [
            ["Phase", h("span", {}, phaseEl(c.phase), " ", c.reason ? h("span", { class: "muted" }, c.reason) : null)],
            ["Since", timeEl(c.phaseSince)],
            ["Kubernetes", c.version || "—"],
            ["Platform", c.platform || "—"],
            ["Nodes", nodesText(c)],
            ["Agents", String(c.agents)],
            ["Last seen", c.connected ? "now" : timeEl(c.lastSeen)],
            ["Approval", c.approval],
            ["Labels", labelsEl(c.labels)],
            ["Registered", timeEl(c.createdAt, false)],
            ["Id", h("code", {}, c.id)],
        ];
        if (c.missingPermissions.length)
            facts.push(["Missing permissions", c.missingPermissions.join(", ")]);
        const admin = who?.admin;
        page(c.name, h("p", {}, h("a", { href: "#/clusters" }, "← Clusters")), h("div", { class: "bar" }, h("h1", {}, c.name), h("a", { class: "button", href: `#/kubeconfig/${encodeURIComponent(c.name)}` }, "Kubeconfig")), h("section", { class: "card", "aria-label": "Status" }, h("dl", { class: "facts", id: "facts" }, ...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))), admin
            ? h("div", { class: "actions", id: "cluster-actions" }, c.phase === "Pending" || c.phase === "Denied"
                ? h("button", { type: "button", id: "approve", onclick: () => void act("approve", "Approve", `Let ${c.name}'s agents carry traffic.`) }, "Approve")
                : null, c.phase !== "Denied"
                ? h("button", { type: "button", class: "secondary", id: "deny", onclick: () => void act("deny", "Deny", `Disconnect ${c.name}'s agents and refuse them from now on.`) }, "Deny")
                : null, h("button", { type: "button", class: "danger", id: "delete", onclick: () => void act("delete", "Delete", `Delete ${c.name}, its grants and its tokens, and cut its agents off. This cannot be undone.`) }, "Delete"))
            : null, h("h2", { id: "agents-title" }, "Connected agents"), c.replicas.length
            ? h("table", { class: "cards", "aria-labelledby": "agents-title", id: "agents-table" }, h("thead", {}, h("tr", {}, ...["Agent", "Version", "Connected", "Heartbeat", "Round trip", "Apiserver"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, ...c.replicas.map((r) => h("tr", {}, h("td", { "data-label": "Agent" }, h("code", {}, r.agentId)), h("td", { "data-label": "Version" }, r.agentVersion), h("td", { "data-label": "Connected" }, timeEl(r.connectedAt)), h("td", { "data-label": "Heartbeat" }, timeEl(Math.floor(r.lastHeartbeatMs / 1000))), h("td", { "data-label": "Round trip" }, `${(r.rttMicros / 1000).toFixed(1)} ms`), h("td", { "data-label": "Apiserver" }, r.apiserverReachable ? "reachable" : `unreachable: ${r.apiserverError}`)))))
            : h("p", { class: "empty" }, "No agent is connected."), h("h2", { id: "history-title" }, "Phase history"), h("table", { class: "cards", "aria-labelledby": "history-title", id: "history-table" }, h("thead", {}, h("tr", {}, ...["Phase", "Reason", "When"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, ...[...c.history].reverse().map((p) => h("tr", {}, h("td", { "data-label": "Phase" }, phaseEl(p.phase)), h("td", { "data-label": "Reason" }, p.reason || "—"), h("td", { "data-label": "When" }, timeEl(p.at)))))));
    };
    // A change on the live stream reloads this cluster (for its agents).
    let seen = clusters.get(name);
    render = () => {
        const now = clusters.get(name);
        if (now !== seen) {
            seen = now;
            void load();
        }
    };
    await load();
    const heading = document.querySelector("main h1");
    heading?.focus();
}
// ----------------------------------------------------------------- access
async function accessPage() {
    const admin = !!who?.admin;
    const grantsBox = h("div", { id: "grants" });
    const tokensBox = h("div", { id: "tokens" });
    const secretBox = h("div", { id: "token-secret", "aria-live": "polite" });
    const loadGrants = async () => {
        const { grants } = await api("GET", "grants");
        grantsBox.replaceChildren(grants.length
            ? h("table", { class: "cards", id: "grants-table", "aria-label": "Grants" }, h("thead", {}, h("tr", {}, ...["Cluster", "Who", "Impersonate", "Created", ""].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, ...grants.map((g) => {
                const subject = g.user ? `user ${g.user}` : `group ${g.group}`;
                return h("tr", {}, h("td", { "data-label": "Cluster" }, g.cluster), h("td", { "data-label": "Who" }, subject), h("td", { "data-label": "Impersonate" }, g.allowImpersonate ? "allowed" : "no"), h("td", { "data-label": "Created" }, timeEl(g.createdAt), ` by ${g.createdBy}`), h("td", { "data-label": "" }, admin
                    ? h("button", {
                        type: "button",
                        class: "small secondary",
                        "aria-label": `Revoke ${subject} on ${g.cluster}`,
                        onclick: async () => {
                            if (!(await confirmAction("Revoke", `Revoke the grant of ${subject} on ${g.cluster}?`, "Revoke")))
                                return;
                            const q = new URLSearchParams({ cluster: g.cluster, user: g.user, group: g.group });
                            try {
                                await api("DELETE", `grants?${q}`);
                                say("Grant revoked.");
                                await loadGrants();
                            }
                            catch (e) {
                                say(e.message, true);
                            }
                        },
                    }, "Revoke")
                    : null));
            })))
            : h("p", { class: "empty" }, "No grants."));
    };
    const loadTokens = async () => {
        const { tokens } = await api("GET", "tokens");
        tokensBox.replaceChildren(tokens.length
            ? h("table", { class: "cards", id: "tokens-table", "aria-label": "Tokens" }, h("thead", {}, h("tr", {}, ...["Id", "User", "Groups", "Cluster", "Expires", ""].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, ...tokens.map((t) => h("tr", { "data-token": t.id }, h("td", { "data-label": "Id" }, h("code", {}, t.id)), h("td", { "data-label": "User" }, t.user), h("td", { "data-label": "Groups" }, t.groups.join(", ") || "—"), h("td", { "data-label": "Cluster" }, t.cluster || "hub-wide"), h("td", { "data-label": "Expires" }, when(t.expiresAt)), h("td", { "data-label": "" }, h("button", {
                type: "button",
                class: "small secondary",
                "aria-label": `Revoke token ${t.id} of ${t.user}`,
                onclick: async () => {
                    if (!(await confirmAction("Revoke", `Revoke ${t.user}'s token ${t.id}? It stops working at once.`, "Revoke")))
                        return;
                    try {
                        await api("DELETE", `tokens/${encodeURIComponent(t.id)}`);
                        say("Token revoked.");
                        await loadTokens();
                    }
                    catch (e) {
                        say(e.message, true);
                    }
                },
            }, "Revoke"))))))
            : h("p", { class: "empty" }, "No tokens."));
    };
    const grantErr = h("p", { class: "error", role: "alert" });
    const grantForm = h("form", {
        id: "grant-form",
        class: "card",
        onsubmit: async (ev) => {
            ev.preventDefault();
            grantErr.textContent = "";
            const kind = formValue(grantForm, "kind");
            const name = formValue(grantForm, "subject");
            try {
                await api("POST", "grants", {
                    cluster: formValue(grantForm, "cluster"),
                    user: kind === "user" ? name : "",
                    group: kind === "group" ? name : "",
                    allowImpersonate: new FormData(grantForm).get("impersonate") === "on",
                });
                say("Grant created.");
                grantForm.reset();
                await loadGrants();
            }
            catch (e) {
                grantErr.textContent = e.message;
            }
        },
    }, h("h3", {}, "Grant access"), field("grant-cluster", "Cluster", h("select", { id: "grant-cluster", name: "cluster", required: true }, ...clusterOptions("", true))), radios("kind", "Grant to a", [["user", "User"], ["group", "Group"]], "user"), field("grant-subject", "User or group name", h("input", { type: "text", id: "grant-subject", name: "subject", required: true, autocomplete: "off" })), h("div", { class: "field" }, h("label", { class: "check" }, h("input", { type: "checkbox", name: "impersonate", id: "grant-impersonate" }), " Allow kubectl --as (checked by the child's RBAC)")), h("div", { class: "actions" }, h("button", { type: "submit", id: "grant" }, "Grant")), grantErr);
    const tokenErr = h("p", { class: "error", role: "alert" });
    const tokenForm = h("form", {
        id: "token-form",
        class: "card",
        onsubmit: async (ev) => {
            ev.preventDefault();
            tokenErr.textContent = "";
            try {
                const r = await api("POST", "tokens", {
                    user: formValue(tokenForm, "user"),
                    groups: formValue(tokenForm, "groups").split(/[,\s]+/).filter(Boolean),
                    ttlSeconds: Number(formValue(tokenForm, "ttl")),
                    cluster: formValue(tokenForm, "cluster"),
                });
                secretBox.replaceChildren(h("div", { class: "card" }, h("p", {}, `Token for ${r.token.user}, shown once (the hub keeps only its hash):`), command(r.secret, "new-token", "the new token")));
                tokenForm.reset();
                await loadTokens();
            }
            catch (e) {
                tokenErr.textContent = e.message;
            }
        },
    }, h("h3", {}, "Create a token"), field("token-user", "User", h("input", { type: "text", id: "token-user", name: "user", required: true, autocomplete: "off" })), field("token-groups", "Groups", h("input", { type: "text", id: "token-groups", name: "groups", autocomplete: "off", placeholder: "dev, ferry:admins" }), "Comma-separated; ferry:admins makes an administrator."), field("token-ttl", "Lifetime", ttlSelect("token-ttl", "2592000")), field("token-cluster", "Bound to cluster", h("select", { id: "token-cluster", name: "cluster" }, h("option", { value: "" }, "none (hub-wide)"), ...clusterOptions("")), "A bound token reaches that cluster only, through the gateway."), h("div", { class: "actions" }, h("button", { type: "submit", id: "create-token" }, "Create token")), tokenErr);
    page("Access", h("h1", {}, "Access"), h("h2", {}, admin ? "Grants" : "Your grants"), grantsBox, admin ? grantForm : null, admin ? h("h2", {}, "Tokens") : null, admin ? tokensBox : null, admin ? secretBox : null, admin ? tokenForm : null);
    try {
        await loadGrants();
        if (admin)
            await loadTokens();
    }
    catch (e) {
        say(e.message, true);
    }
}
// ------------------------------------------------------------- kubeconfig
function kubeconfigPage(selected) {
    const err = h("p", { class: "error", role: "alert" });
    const done = h("div", { id: "kubeconfig-done", "aria-live": "polite" });
    const form = h("form", {
        id: "kubeconfig-form",
        class: "card",
        onsubmit: async (ev) => {
            ev.preventDefault();
            err.textContent = "";
            try {
                const cluster = formValue(form, "cluster");
                const r = await api("POST", "kubeconfig", {
                    cluster,
                    auth: formValue(form, "auth"),
                    ttlSeconds: Number(formValue(form, "ttl")),
                });
                download(r.filename, r.kubeconfig);
                done.replaceChildren(h("div", { class: "card" }, h("p", { id: "kubeconfig-saved" }, `Saved ${r.filename}, valid until ${when(r.expiresAt)}. Use it with:`), command(`kubectl --kubeconfig ${r.filename} get namespaces`, "kubeconfig-command", "kubectl with the kubeconfig")));
            }
            catch (e) {
                err.textContent = e.message;
            }
        },
    }, field("kc-cluster", "Cluster", h("select", { id: "kc-cluster", name: "cluster", required: true }, ...clusterOptions(selected))), radios("auth", "Credential", [["cert", "Client certificate"], ["token", "Bearer token (revocable)"]], "cert"), field("kc-ttl", "Lifetime", ttlSelect("kc-ttl", "2592000")), h("div", { class: "actions" }, h("button", { type: "submit", id: "download-kubeconfig" }, "Download kubeconfig")), err);
    page("Kubeconfig", h("h1", {}, "Download a kubeconfig"), h("p", {}, `For ${who?.user ?? "you"}, bound to one cluster: it reaches that cluster through the hub, as far as your grants and the cluster's RBAC allow.`), form, done);
    const select = document.getElementById("kc-cluster");
    // The list may still be arriving on the live stream: refill when it does.
    render = () => {
        if (select && select.options.length !== clusters.size) {
            const keep = select.value || selected;
            select.replaceChildren(...clusterOptions(keep));
        }
    };
}
// ------------------------------------------------------------------ start
async function start() {
    $("skip").addEventListener("click", (ev) => {
        ev.preventDefault();
        $("main").focus();
    });
    $("signout").addEventListener("click", async () => {
        try {
            await api("DELETE", "session");
        }
        catch {
            /* signed out either way */
        }
        signedOut();
        say("Signed out.");
    });
    window.addEventListener("hashchange", route);
    // Relative times tick without a reload.
    window.setInterval(() => {
        for (const t of document.querySelectorAll("time[data-ago]"))
            t.textContent = ago(Number(t.dataset.ago));
    }, 10000);
    try {
        signedIn(await api("GET", "session"));
    }
    catch {
        who = null;
    }
    route();
}
document.addEventListener("DOMContentLoaded", () => void start());
