use crate::auth::JwtVerifier;
use agentplane_control::ControlPlane;
use agentplane_core::action::{ActionSpec, Method, REGISTRY};
use agentplane_runtime::gateway::Runtime;
use std::collections::HashMap;
use std::sync::Arc;

/// What every handler can reach. Handlers never see a raw pool: only the planes.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    control: ControlPlane,
    runtime: Runtime,
    verifier: JwtVerifier,
    actions: HashMap<(axum::http::Method, &'static str), &'static ActionSpec>,
}

pub(crate) fn http_method(m: Method) -> axum::http::Method {
    match m {
        Method::Get => axum::http::Method::GET,
        Method::Post => axum::http::Method::POST,
        Method::Patch => axum::http::Method::PATCH,
        Method::Put => axum::http::Method::PUT,
        Method::Delete => axum::http::Method::DELETE,
    }
}

impl AppState {
    pub fn new(control: ControlPlane, runtime: Runtime, verifier: JwtVerifier) -> Self {
        let actions = REGISTRY
            .iter()
            .map(|a| ((http_method(a.method), a.path), *a))
            .collect();
        Self {
            inner: Arc::new(Inner {
                control,
                runtime,
                verifier,
                actions,
            }),
        }
    }
    pub fn control(&self) -> &ControlPlane {
        &self.inner.control
    }
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }
    pub fn verifier(&self) -> &JwtVerifier {
        &self.inner.verifier
    }
    /// The registry declaration of the route a request matched.
    pub fn action(&self, method: &axum::http::Method, path: &str) -> Option<&'static ActionSpec> {
        self.inner.actions.get(&(method.clone(), path)).copied()
    }
}
