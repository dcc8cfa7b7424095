//! `wharf delete`: delete objects named on the command line (`KIND NAME...`,
//! `KIND/NAME...`) or in manifests (`-f`), each on its own, reporting every failure.

use super::cluster::{Cluster, is_not_found};
use super::{during, finish, manifest, report, target};
use anyhow::bail;
use clap::Args;
use kube::api::DeleteParams;
use std::path::PathBuf;
use wharf_control::api::ResourceKind;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// KIND NAME... or KIND/NAME...
    #[arg(value_name = "KIND NAME")]
    pub args: Vec<String>,

    /// Delete the objects of these manifests (file, directory or -); repeatable
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with = "args"
    )]
    pub files: Vec<PathBuf>,

    /// Namespace of the objects [default: the kubeconfig context's, else default]
    #[arg(short, long)]
    pub namespace: Option<String>,

    /// Treat an object that does not exist as deleted
    #[arg(long)]
    pub ignore_not_found: bool,
}

pub async fn run(cluster: &Cluster, args: DeleteArgs) -> anyhow::Result<()> {
    let mut objects: Vec<(
        &'static ResourceKind,
        Option<String>,
        String,
        Option<String>,
    )> = Vec::new();
    let mut failed = false;
    if args.files.is_empty() {
        let namespace = args.namespace.as_deref().unwrap_or(&cluster.namespace);
        for t in target::parse(&args.args)? {
            let Some(name) = t.name else {
                bail!(
                    "a {} needs a name: wharf delete {} NAME",
                    t.kind.singular,
                    t.kind.plural
                );
            };
            objects.push((t.kind, Some(namespace.to_string()), name, None));
        }
    } else {
        for doc in manifest::load(&args.files)? {
            let placed = doc.map_err(anyhow::Error::from).and_then(|mut doc| {
                let kind = doc.kind()?;
                let namespace = doc.place(kind, args.namespace.as_deref(), &cluster.namespace)?;
                Ok((
                    kind,
                    namespace,
                    doc.name().to_string(),
                    Some(doc.origin.source),
                ))
            });
            match placed {
                Ok(object) => objects.push(object),
                Err(e) => {
                    report(&e);
                    failed = true;
                }
            }
        }
        if objects.is_empty() && !failed {
            bail!("no objects passed to delete");
        }
    }

    for (kind, namespace, name, source) in objects {
        let at = cluster.at(kind, namespace.as_deref());
        match cluster
            .send(at.delete(&name, &DeleteParams::default()))
            .await
        {
            Ok(_) => println!("{} \"{name}\" deleted", kind.qualified_singular()),
            Err(e) if args.ignore_not_found && is_not_found(&e) => {}
            Err(e) => {
                let err = cluster.explain(e);
                report(&match source {
                    Some(source) => during(err, format!("error when deleting \"{source}\"")),
                    None => err,
                });
                failed = true;
            }
        }
    }
    finish(failed)
}
