//! The Docker stack as `just up` starts it on a fresh clone: both compose
//! files, interpolated with `.env.example`, the Dockerfiles they build, and
//! the configuration contract the services are held to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::compose::Project;
use crate::contract::{self, Variable};
use crate::dockerfile::Dockerfile;

#[derive(Debug)]
pub struct Stack {
    pub root: PathBuf,
    pub project: Project,
    pub contract: Vec<Variable>,
}

impl Stack {
    pub fn load() -> Result<Stack, String> {
        let root = crate::repo_root();
        let project = Project::load(&root, &crate::COMPOSE_FILES, crate::ENV_EXAMPLE)?;
        let readme = read(&root.join("README.md"))?;
        let contract = contract::from_readme(&readme)?;
        Ok(Stack {
            root,
            project,
            contract,
        })
    }

    /// The path of the Dockerfile a service is built from.
    pub fn dockerfile_path(&self, service: &str) -> Result<PathBuf, String> {
        let build = self
            .project
            .service(service)?
            .build()?
            .ok_or_else(|| format!("{service} is not built from a Dockerfile"))?;
        Ok(self.root.join(&build.context).join(&build.dockerfile))
    }

    pub fn dockerfile(&self, service: &str) -> Result<Dockerfile, String> {
        let path = self.dockerfile_path(service)?;
        Dockerfile::parse(&read(&path)?).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The environment a built service's process gets: the `ENV` of its
    /// image's final stage, with the compose file's `environment` over it.
    pub fn container_env(&self, service: &str) -> Result<BTreeMap<String, String>, String> {
        let mut env = self.dockerfile(service)?.final_stage().env()?;
        env.extend(self.project.service(service)?.environment()?);
        Ok(env)
    }

    /// The contract's variables that a compose service reads.
    pub fn contract_for(&self, service: &str) -> Result<Vec<&Variable>, String> {
        let table_name = contract::table_name(service).ok_or_else(|| {
            format!("{service} is not one of the services in the configuration table")
        })?;
        Ok(self
            .contract
            .iter()
            .filter(|v| v.read_by(table_name))
            .collect())
    }
}

pub fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}
