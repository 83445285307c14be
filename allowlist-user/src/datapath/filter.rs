//! The running filter: the program loaded with its pinned maps, attached through
//! pinned XDP links, and the map sync.
//!
//! Start-up is load → fill the maps → attach, so that a fresh filter never runs with
//! an empty allowlist, and an agent that restarts finds the previous program still
//! attached and swaps in its own with an atomic link update: there is no moment
//! without a filter.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fmt,
    path::{Path, PathBuf},
};

use allowlist_common::{PROGRAM_NAME, maps as names};
use aya::{
    Ebpf,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    DatapathError, LoadOptions, Maps, loader,
    pins::{self, ExpectedMap},
    program_object,
    sync::{self, SyncReport},
};

/// How XDP attaches to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native XDP only: fail if the driver lacks it.
    Native,
    /// Generic (skb) XDP: works on every interface, slower.
    Skb,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Auto => XdpMode::Default,
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        })
    }
}

/// An interface to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachSpec {
    pub name: String,
    pub mode: AttachMode,
}

/// What `attach` did on one interface.
#[derive(Clone, Debug, Serialize)]
pub struct Attached {
    pub interface: String,
    pub mode: AttachMode,
    /// The previous agent's link was kept and its program replaced atomically.
    pub adopted: bool,
}

pub struct Filter {
    ebpf: Ebpf,
    maps: Maps,
    pin_dir: PathBuf,
    /// The maps were created by this load (no previous agent's pins were found).
    fresh: bool,
    attached: Vec<Attached>,
    /// What the tries hold, as last written; `None` when unknown (a fresh load, adopted
    /// maps, or a sync that failed halfway), in which case the next sync reads the
    /// tries and rebuilds the fast table from them.
    applied: Option<BTreeMap<IpNet, u32>>,
}

/// Fails unless every interface exists, naming the ones that do.
pub fn check_interfaces(interfaces: &[AttachSpec]) -> Result<(), DatapathError> {
    for spec in interfaces {
        let c = CString::new(spec.name.as_str()).map_err(|_| DatapathError::MissingInterface {
            name: spec.name.clone(),
            available: available_interfaces(),
        })?;
        // SAFETY: c is a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            return Err(DatapathError::MissingInterface {
                name: spec.name.clone(),
                available: available_interfaces(),
            });
        }
    }
    Ok(())
}

fn available_interfaces() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(", ")
}

/// The maps this build's object declares, for the compatibility check of pins.
fn expected_maps() -> Result<Vec<ExpectedMap>, DatapathError> {
    let object = aya_obj::Object::parse(program_object()?)
        .map_err(|e| DatapathError::Parse(e.to_string()))?;
    Ok(names::ALL
        .iter()
        .filter_map(|name| {
            object.maps.get(*name).map(|m| ExpectedMap {
                name: (*name).to_owned(),
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
            })
        })
        .collect())
}

impl Filter {
    /// Loads the program with its maps pinned under `pin_dir`, reusing the maps a
    /// previous agent pinned there. Attaches nothing yet.
    pub fn load(pin_dir: &Path, options: &LoadOptions) -> Result<Self, DatapathError> {
        pins::prepare_pin_dir(pin_dir)?;
        pins::check_compatible(pin_dir, &expected_maps()?)?;
        let fresh = !pins::has_pinned_maps(pin_dir);
        let mut loader = loader(options);
        let paths: Vec<(&str, PathBuf)> = names::ALL
            .iter()
            .map(|name| (*name, pins::map_pin(pin_dir, name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let loaded = loader
            .load(program_object()?)
            .map_err(DatapathError::Load)
            .and_then(|mut ebpf| {
                super::load_program(&mut ebpf)?;
                let maps = Maps::take_from(&mut ebpf)?;
                Ok((ebpf, maps))
            });
        let (ebpf, maps) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                if fresh {
                    let _ = pins::remove_all(pin_dir);
                }
                return Err(e);
            }
        };
        Ok(Self {
            ebpf,
            maps,
            pin_dir: pin_dir.to_owned(),
            fresh,
            attached: Vec::new(),
            applied: None,
        })
    }

    /// Whether this load found a previous agent's maps.
    pub fn adopted_maps(&self) -> bool {
        !self.fresh
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    /// Attaches to every interface in `interfaces` through a pinned link: an existing
    /// link (a previous agent's) gets this program atomically; otherwise a new link is
    /// created and pinned. Links to interfaces no longer listed are unpinned last.
    /// If this load created the pins and attaching fails, every pin is removed again.
    pub fn attach(&mut self, interfaces: &[AttachSpec]) -> Result<(), DatapathError> {
        let result = self.attach_all(interfaces);
        if result.is_err() && self.fresh {
            let _ = pins::remove_all(&self.pin_dir);
        }
        result
    }

    fn attach_all(&mut self, interfaces: &[AttachSpec]) -> Result<(), DatapathError> {
        check_interfaces(interfaces)?;
        let mut attached = Vec::new();
        for spec in interfaces {
            attached.push(self.attach_one(spec)?);
        }
        let wanted: BTreeSet<&str> = interfaces.iter().map(|s| s.name.as_str()).collect();
        for stale in pins::pinned_links(&self.pin_dir).map_err(|source| DatapathError::PinDir {
            path: self.pin_dir.clone(),
            source,
        })? {
            if !wanted.contains(stale.as_str()) {
                let path = pins::link_pin(&self.pin_dir, &stale);
                std::fs::remove_file(&path)
                    .map_err(|source| DatapathError::PinDir { path, source })?;
                tracing::info!(interface = %stale, "detached from an interface no longer configured");
            }
        }
        self.attached = attached;
        Ok(())
    }

    fn program(&mut self) -> Result<&mut Xdp, DatapathError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DatapathError::MissingProgram(PROGRAM_NAME))?
            .try_into()
            .map_err(DatapathError::Program)
    }

    fn attach_one(&mut self, spec: &AttachSpec) -> Result<Attached, DatapathError> {
        let pin = pins::link_pin(&self.pin_dir, &spec.name);
        if pin.exists() {
            match self.replace_in_link(&pin) {
                Ok(()) => {
                    tracing::info!(interface = %spec.name, "adopted the pinned XDP link");
                    return Ok(Attached {
                        interface: spec.name.clone(),
                        mode: spec.mode,
                        adopted: true,
                    });
                }
                Err(e) => {
                    // The link is defunct (its interface went away and came back, say):
                    // nothing runs through it, so it is replaced.
                    tracing::warn!(interface = %spec.name, error = %format!("{:#}", anyhow::Error::from(e)), "pinned link unusable; attaching afresh");
                    std::fs::remove_file(&pin).map_err(|source| DatapathError::PinDir {
                        path: pin.clone(),
                        source,
                    })?;
                }
            }
        }
        let name = spec.name.clone();
        let program = self.program()?;
        let link_id = program
            .attach(&name, spec.mode.xdp_mode())
            .map_err(|source| DatapathError::Attach {
                interface: name.clone(),
                mode: spec.mode,
                source,
            })?;
        let link = program.take_link(link_id).map_err(DatapathError::Program)?;
        let fd_link =
            FdLink::try_from(link).map_err(|_| DatapathError::NoLinkSupport(name.clone()))?;
        fd_link.pin(&pin).map_err(|source| DatapathError::PinLink {
            path: pin.clone(),
            source,
        })?;
        tracing::info!(interface = %name, mode = %spec.mode, "attached");
        Ok(Attached {
            interface: name,
            mode: spec.mode,
            adopted: false,
        })
    }

    fn replace_in_link(&mut self, pin: &Path) -> Result<(), DatapathError> {
        let pinned = PinnedLink::from_pin(pin).map_err(|e| DatapathError::OpenLink {
            path: pin.to_owned(),
            reason: e.to_string(),
        })?;
        let link =
            XdpLink::try_from(FdLink::from(pinned)).map_err(|e| DatapathError::OpenLink {
                path: pin.to_owned(),
                reason: e.to_string(),
            })?;
        let program = self.program()?;
        let link_id = program
            .attach_to_link(link)
            .map_err(DatapathError::Program)?;
        // The pin keeps the link; closing this descriptor must not detach it.
        let link = program.take_link(link_id).map_err(DatapathError::Program)?;
        drop(
            FdLink::try_from(link)
                .map_err(|_| DatapathError::NoLinkSupport(pin.display().to_string()))?,
        );
        Ok(())
    }

    /// Makes the tries hold exactly `desired` and the fast table repeat them (see
    /// [`sync::apply`]). The first sync after a load, and the one after a sync that
    /// failed halfway, read the tries and rebuild the whole fast table from them first
    /// ([`sync::resync`]): this runs before the program is attached or swapped in.
    pub fn sync(&mut self, desired: &BTreeMap<IpNet, u32>) -> Result<SyncReport, DatapathError> {
        let report = match self.applied.take() {
            Some(applied) => sync::apply(&mut self.maps, &applied, desired)?,
            None => sync::resync(&mut self.maps, desired)?,
        };
        self.applied = Some(desired.clone());
        Ok(report)
    }

    /// Removes every pin: with the agent gone, the program detaches.
    pub fn remove_pins(&self) -> Result<Vec<PathBuf>, DatapathError> {
        pins::remove_all(&self.pin_dir)
    }
}
