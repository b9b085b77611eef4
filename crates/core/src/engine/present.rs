//! Generated text the engine itself answers: the root `.help` and the mount table.
//!
//! Must never: show a caller a mount, or a count, its policy hides.

use super::*;

const ROOT_HELP_HEAD: &str =
    "nomadfs: secrets as files. Each folder here is a mounted backend; `cat MOUNT/.help` explains it.\n";

impl Engine {
    /// The mount table as `Path Type Description` columns (the control plane's file).
    pub(super) fn mounts_table_text(&self) -> String {
        self.table_text(&|_| true)
    }

    /// The table rows of the mounts `visible` keeps, then the control plane's.
    pub(super) fn table_text(&self, visible: &dyn Fn(&str) -> bool) -> String {
        let mut rows = vec![(
            "Path".to_string(),
            "Type".to_string(),
            "Description".to_string(),
        )];
        for m in self
            .mount_entries()
            .into_iter()
            .filter(|m| visible(&m.path))
        {
            rows.push((format!("{}/", m.path), m.kind, m.description));
        }
        let sys = &self.sys.entry;
        rows.push((
            format!("{}/", sys.path),
            sys.kind.clone(),
            sys.description.clone(),
        ));
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (a, b, c) in rows {
            out.push_str(format!("{a:<w0$}  {b:<w1$}  {c}").trim_end());
            out.push('\n');
        }
        out
    }

    /// `.help` at the root: the mounts this caller may see, filtered as the root listing is.
    pub(super) fn root_help(&self, caller: &Caller) -> String {
        let policies = self.policies();
        let visible = |m: &str| policies.may_see(caller, m, true);
        let sys = &self.sys.entry.path;
        format!(
            "{ROOT_HELP_HEAD}`{sys}/` is the control plane (`cat {sys}/.help`).\n\n{}",
            self.table_text(&visible)
        )
    }
}
