//! How commands name a supervised process: `HOST/NAME` (`[[hosts]]` name, process name), or
//! `NAME` alone where exactly one host runs a process of that name — the one spelling of
//! docs/cli-spellings.md, shared by `agent start|stop|restart|logs`, `logs` and `swap --process`.
//! The old two-word `HOST NAME` still parses, with a deprecation warning.

use anyhow::bail;

use super::Fleet;

/// A process as the user named it; the host is found when left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessName {
    pub host: Option<String>,
    pub name: String,
}

impl ProcessName {
    /// `first` is `HOST/NAME` or `NAME`; `second` is the NAME of the old `HOST NAME` spelling.
    /// Returns the name and, for the old spelling, the warning to print.
    pub fn parse(
        first: &str,
        second: Option<&str>,
    ) -> anyhow::Result<(ProcessName, Option<String>)> {
        if let Some(name) = second {
            let name = ProcessName {
                host: Some(first.to_string()),
                name: name.to_string(),
            };
            let warning = format!(
                "`{first} {}` (HOST NAME, two words) is deprecated; write {first}/{}",
                name.name, name.name
            );
            return Ok((name, Some(warning)));
        }
        match first.split_once('/') {
            Some((host, name)) if !host.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((
                    ProcessName {
                        host: Some(host.to_string()),
                        name: name.to_string(),
                    },
                    None,
                ))
            }
            Some(_) => bail!(
                "{first:?} is not a process name: write HOST/NAME (e.g. gpu-box/target) or NAME"
            ),
            None => Ok((
                ProcessName {
                    host: None,
                    name: first.to_string(),
                },
                None,
            )),
        }
    }

    /// The host: as given, else the one configured host whose agent runs a process of this name.
    pub async fn host(&self, fleet: &Fleet) -> anyhow::Result<String> {
        match &self.host {
            Some(host) => Ok(host.clone()),
            None => super::logs::find_host(fleet, &self.name).await,
        }
    }
}

impl std::fmt::Display for ProcessName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) => write!(f, "{host}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_slash_name_is_the_spelling_and_two_words_still_parse_with_a_warning() {
        let (p, warning) = ProcessName::parse("gpu-box/target", None).expect("parses");
        assert_eq!(p.host.as_deref(), Some("gpu-box"));
        assert_eq!(p.name, "target");
        assert!(warning.is_none());
        let (alone, _) = ProcessName::parse("target", None).expect("parses");
        assert_eq!(alone.host, None);
        let (old, warning) = ProcessName::parse("gpu-box", Some("target")).expect("parses");
        assert_eq!(old, p);
        assert!(warning.is_some_and(|w| w.contains("deprecated") && w.contains("gpu-box/target")));
        for bad in ["/target", "gpu-box/", "a/b/c"] {
            let e = ProcessName::parse(bad, None).expect_err(bad);
            assert!(e.to_string().contains("HOST/NAME"), "{e}");
        }
    }
}
