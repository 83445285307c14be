//! The agent's folders depend on each other one way only (README, "The agent's
//! map"): each may use those before it in [`ORDER`], never one after it. This test
//! reads every non-test item of `allowlist-user/src` with syn and lists each
//! `crate::<folder>` it names, in `use` items and in paths.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use syn::visit::{self, Visit};

/// The folders (and the leaf `prefixes.rs`), lowest first.
const ORDER: &[&str] = &[
    "prefixes", "store", "sources", "config", "datapath", "policy", "denied", "observe", "agent",
    "cli",
];

/// The `crate::<module>` names a file's non-test items use.
#[derive(Default)]
struct Uses(BTreeSet<String>);

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

impl Uses {
    fn tree(&mut self, tree: &syn::UseTree, after_crate: bool) {
        match tree {
            syn::UseTree::Path(p) if p.ident == "crate" => self.tree(&p.tree, true),
            syn::UseTree::Path(p) if after_crate => {
                self.0.insert(p.ident.to_string());
            }
            syn::UseTree::Name(n) if after_crate => {
                self.0.insert(n.ident.to_string());
            }
            syn::UseTree::Rename(r) if after_crate => {
                self.0.insert(r.ident.to_string());
            }
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.tree(t, after_crate)),
            _ => {}
        }
    }
}

impl<'ast> Visit<'ast> for Uses {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_test(&item.attrs) {
            visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test(&item.attrs) {
            visit::visit_item_fn(self, item);
        }
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        if !is_test(&item.attrs) {
            visit::visit_item_impl(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !is_test(&item.attrs) {
            visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if !is_test(&item.attrs) {
            self.tree(&item.tree, false);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next())
            && first.ident == "crate"
        {
            self.0.insert(second.ident.to_string());
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Paths inside macro calls (`matches!(x, crate::a::B)`) are tokens to syn.
        let tokens = mac.tokens.to_string();
        for (i, _) in tokens.match_indices("crate ::") {
            let rest = &tokens[i + "crate ::".len()..];
            let name: String = (rest.trim_start().chars())
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            self.0.insert(name);
        }
        visit::visit_macro(self, mac);
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("reading the agent's sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every use of a folder later in [`ORDER`] than the file's own: `file -> folder`.
fn upward_uses(src: &Path) -> Vec<String> {
    let rank = |name: &str| ORDER.iter().position(|m| *m == name);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let top = relative.iter().next().expect("a first component");
        let top = top.to_string_lossy();
        let Some(own) = rank(top.trim_end_matches(".rs")) else {
            continue; // lib.rs, main.rs: the edges that assemble everything
        };
        if relative.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).expect("reading a source file");
        let parsed = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        let mut uses = Uses::default();
        uses.visit_file(&parsed);
        for used in &uses.0 {
            if rank(used).is_some_and(|r| r > own) {
                found.push(format!("{} -> {used}", relative.display()));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn the_agents_folders_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../allowlist-user/src");
    assert_eq!(upward_uses(&src), Vec::<String>::new(), "order: {ORDER:?}");
}

#[test]
fn an_upward_use_is_found_in_use_items_paths_and_macros_but_not_in_tests() {
    let tmp = std::env::temp_dir().join(format!("xtask-layout-{}", std::process::id()));
    let write = |name: &str, text: &str| {
        let path = tmp.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    write("store/mod.rs", "use crate::{prefixes, policy::Refresher};");
    write("sources/dns.rs", "fn f() { let _ = crate::cli::run(); }");
    write(
        "config/mod.rs",
        "fn f() -> bool { matches!(1, crate::agent::X) }",
    );
    write(
        "datapath/mod.rs",
        "#[cfg(test)] mod tests { use crate::cli; }\nuse crate::config::Config;",
    );
    write("lib.rs", "use crate::cli;");
    let found = upward_uses(&tmp);
    fs::remove_dir_all(&tmp).unwrap();
    assert_eq!(
        found,
        [
            "config/mod.rs -> agent",
            "sources/dns.rs -> cli",
            "store/mod.rs -> policy"
        ]
    );
}
