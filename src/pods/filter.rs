//! The filters of ListPodSandbox and ListContainers, in domain terms.

use std::collections::HashMap;

use super::{Container, ContainerState, Sandbox, SandboxState};

/// Every field that is set must match; an unset field matches everything.
#[derive(Debug, Default, Clone)]
pub struct PodFilter {
    /// A full id or a prefix of one.
    pub id: Option<String>,
    pub state: Option<SandboxState>,
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Default, Clone)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub state: Option<ContainerState>,
    pub pod_id: Option<String>,
    pub labels: HashMap<String, String>,
}

fn id_matches(wanted: &Option<String>, id: &str) -> bool {
    wanted.as_deref().is_none_or(|wanted| id.starts_with(wanted))
}

fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}

impl PodFilter {
    /// True for the filter that matches every pod.
    pub fn selects_all(&self) -> bool {
        self.id.is_none() && self.state.is_none() && self.labels.is_empty()
    }

    /// Whether it selects `sandbox`; never a joined one (a mixed pod's),
    /// which the backing runtime lists.
    pub fn matches(&self, sandbox: &Sandbox) -> bool {
        sandbox.joined.is_none()
            && id_matches(&self.id, &sandbox.id)
            && self.state.is_none_or(|state| state == sandbox.state())
            && labels_match(&self.labels, &sandbox.config.labels)
    }
}

impl ContainerFilter {
    /// True for the filter that matches every container.
    pub fn selects_all(&self) -> bool {
        self.id.is_none() && self.state.is_none() && self.pod_id.is_none() && self.labels.is_empty()
    }

    pub fn matches(&self, container: &Container) -> bool {
        id_matches(&self.id, &container.id)
            && id_matches(&self.pod_id, &container.pod_id)
            && self.state.is_none_or(|state| state == container.state())
            && labels_match(&self.labels, &container.config.labels)
    }
}
