//! What tests read out of `agent.yaml`: the Deployment's arguments and the
//! bootstrap Secret's files, so an agent process runs exactly as the
//! manifest's pod would.

use std::path::Path;

use base64::Engine as _;
use serde::Deserialize as _;

pub struct AgentManifest {
    pub docs: Vec<serde_yaml::Value>,
    /// The agent container's `args`, in order.
    pub args: Vec<String>,
}

impl AgentManifest {
    pub fn parse(text: &str) -> AgentManifest {
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(text)
            .map(|d| serde_yaml::Value::deserialize(d).expect("yaml"))
            .collect();
        let deploy = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
        let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        AgentManifest { docs, args }
    }

    /// Writes the bootstrap Secret's keys as the pod would see them mounted.
    pub fn mount_secret(&self, dir: &Path) {
        let secret = self
            .docs
            .iter()
            .find(|d| d["metadata"]["name"] == "ferry-agent-bootstrap")
            .expect("the bootstrap Secret");
        std::fs::create_dir_all(dir).expect("mkdir");
        for key in ["token", "ca.crt"] {
            let b64 = secret["data"][key].as_str().unwrap_or_else(|| panic!("no {key} in the Secret"));
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
            std::fs::write(dir.join(key), bytes).expect("write");
        }
    }
}
