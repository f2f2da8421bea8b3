//! `p2ner plugins list | inspect | check`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use p2ner_plugin_api::{Group, Params};
use serde_json::json;

use p2ner_engine::plugins::{libraries_in, Component, PluginOptions, Registry, Severity};

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List every installed component.
    List {
        /// Print a JSON array, one object per component.
        #[arg(long)]
        json: bool,
    },
    /// Show everything a component (or a whole library) declares.
    Inspect {
        /// A component name (`synthetic`), GROUP/NAME (`p2ner.input/synthetic`
        /// or `input/synthetic`) or a library name.
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Load and verify every library in DIR; exits non-zero on any problem.
    Check { dir: PathBuf },
}

pub fn run(cmd: &PluginsCommand, options: &PluginOptions) -> Result<ExitCode> {
    match cmd {
        PluginsCommand::List { json } => {
            let registry = options.registry()?;
            print_problems(&registry);
            list(&registry, *json);
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Inspect { name, json } => {
            let registry = options.registry()?;
            print_problems(&registry);
            inspect(&registry, name, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Check { dir } => check(dir, options),
    }
}

fn print_problems(registry: &Registry) {
    for problem in registry.problems() {
        eprintln!("{problem}");
    }
}

fn component_json(c: &Component<'_>) -> serde_json::Value {
    json!({
        "group": c.group.as_str(),
        "name": c.info.name.as_str(),
        "version": c.info.version.as_str(),
        "library": c.library.info.name.as_str(),
        "description": c.info.description.as_str(),
        "path": c.library.path.display().to_string(),
        "params": c.info.params.iter().map(|p| json!({
            "name": p.name.as_str(),
            "default": p.default.as_str(),
            "help": p.help.as_str(),
        })).collect::<Vec<_>>(),
    })
}

fn list(registry: &Registry, as_json: bool) {
    let components: Vec<Component<'_>> = registry.components().collect();
    if as_json {
        let array: Vec<_> = components.iter().map(component_json).collect();
        println!("{}", serde_json::to_string_pretty(&array).expect("json"));
        return;
    }
    if components.is_empty() {
        println!("no plugins found; searched:");
        for dir in registry.searched() {
            println!("  {} ({})", dir.path.display(), dir.origin);
        }
        return;
    }
    let rows: Vec<[String; 5]> = components
        .iter()
        .map(|c| {
            [
                c.group.as_str().to_owned(),
                c.info.name.to_string(),
                c.info.version.to_string(),
                c.library.info.name.to_string(),
                c.info.description.to_string(),
            ]
        })
        .collect();
    print_table(
        ["GROUP", "NAME", "VERSION", "LIBRARY", "DESCRIPTION"],
        &rows,
    );
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out
    };
    println!("{}", line(header));
    for row in rows {
        println!("{}", line(row.each_ref().map(String::as_str)));
    }
}

fn inspect(registry: &Registry, name: &str, as_json: bool) -> Result<()> {
    let by_key = name
        .split_once('/')
        .and_then(|(g, n)| Group::parse(g).map(|g| (g, n)));
    let matches: Vec<Component<'_>> = registry
        .components()
        .filter(|c| match by_key {
            Some((group, n)) => c.group == group && c.info.name == n,
            None => c.info.name == name || c.library.info.name == name,
        })
        .collect();
    if matches.is_empty() {
        let installed: Vec<String> = registry.components().map(|c| c.key()).collect();
        bail!(
            "no component or library named '{name}' is installed (installed: {}); searched: {}",
            if installed.is_empty() {
                "none".to_owned()
            } else {
                installed.join(", ")
            },
            registry
                .searched()
                .iter()
                .map(|d| d.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if as_json {
        let array: Vec<_> = matches
            .iter()
            .map(|c| {
                let mut v = component_json(c);
                v["license"] = c.library.info.license.as_str().into();
                v["library_version"] = c.library.info.version.as_str().into();
                v["abi_version"] = c.library.info.abi_version.as_str().into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&array).expect("json"));
        return Ok(());
    }
    let mut by_library: BTreeMap<&std::path::Path, Vec<&Component<'_>>> = BTreeMap::new();
    for c in &matches {
        by_library
            .entry(c.library.path.as_path())
            .or_default()
            .push(c);
    }
    for (path, components) in by_library {
        let lib = &components[0].library.info;
        println!("Library       {} {}", lib.name, lib.version);
        println!("File          {}", path.display());
        println!("License       {}", lib.license);
        println!("Plugin ABI    {}", lib.abi_version);
        for c in components {
            println!();
            println!("{} {}", c.key(), c.info.version);
            println!("  {}", c.info.description);
            if c.info.params.is_empty() {
                println!("  Parameters: none");
                continue;
            }
            println!("  Parameters:");
            let width = c
                .info
                .params
                .iter()
                .map(|p| p.name.len())
                .max()
                .unwrap_or(0);
            for p in c.info.params.iter() {
                println!(
                    "    {:<width$}  {}  (default: {})",
                    p.name, p.help, p.default
                );
            }
        }
        println!();
    }
    Ok(())
}

/// Loads DIR alone, then makes every component once with its defaults: what
/// a plugin author runs in CI before shipping a library.
fn check(dir: &std::path::Path, _options: &PluginOptions) -> Result<ExitCode> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let files = libraries_in(dir)?;
    if files.is_empty() {
        bail!(
            "no shared libraries (*{}) in {}",
            std::env::consts::DLL_SUFFIX,
            dir.display()
        );
    }
    let registry = Registry::load_dirs(&[dir]);
    let mut errors = registry
        .problems()
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    print_problems(&registry);
    for library in registry.libraries() {
        println!(
            "ok: {}: {} {} ({} components)",
            library.path.display(),
            library.info.name,
            library.info.version,
            library.info.components.len()
        );
    }
    let components: Vec<Component<'_>> = registry.components().collect();
    for c in &components {
        let made = registry
            .new_component(c.group, &c.info.name, None, &Params::new())
            .map(drop);
        match made {
            Ok(()) => println!(
                "ok: {} {} instantiates with its defaults",
                c.key(),
                c.info.version
            ),
            // A conflict was already reported above.
            Err(p2ner_engine::plugins::ComponentError::Conflict { .. }) => {}
            Err(e) => {
                errors += 1;
                eprintln!("error: {}: {e}", c.library.path.display());
            }
        }
    }
    let loaded = registry.libraries().len();
    println!(
        "{} libraries checked: {loaded} loaded, {errors} problems",
        files.len()
    );
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
