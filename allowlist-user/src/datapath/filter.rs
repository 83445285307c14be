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
    path::{Path, PathBuf},
};

use allowlist_common::{PROGRAM_NAME, maps as names};
use aya::{
    Ebpf,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    AttachMode, DatapathError, Interface, LoadOptions, Maps,
    link::{self, LinkState},
    loader,
    pins::{self, ExpectedMap},
    program_object,
    sync::{self, SyncReport},
};

/// The XDP mode aya attaches in for a configured mode.
fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Auto => XdpMode::Default,
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
    }
}

/// How one configured interface stands: filtered through a live link of this
/// filter, or not, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InterfaceState {
    /// The name in the configuration.
    pub name: String,
    pub mode: AttachMode,
    /// A live link of this filter is attached to the device.
    pub attached: bool,
    /// The link was inherited from a previous agent (or followed a renamed device).
    pub adopted: bool,
    pub ifindex: Option<u32>,
    /// The device's name now, when it was renamed after the filter attached to it.
    pub now_named: Option<String>,
    /// Why the interface is not filtered.
    pub error: Option<String>,
}

impl InterfaceState {
    fn new(spec: &Interface) -> Self {
        Self {
            name: spec.name.clone(),
            mode: spec.mode,
            attached: false,
            adopted: false,
            ifindex: None,
            now_named: None,
            error: None,
        }
    }

    fn failed(spec: &Interface, error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::new(spec)
        }
    }
}

pub(crate) struct Filter {
    ebpf: Ebpf,
    maps: Maps,
    pin_dir: PathBuf,
    /// The maps were created by this load (no previous agent's pins were found).
    fresh: bool,
    /// The interfaces to filter, and how each stands since the last check.
    interfaces: Vec<InterfaceState>,
    program_id: u32,
    /// What the tries hold, as last written; `None` when unknown (a fresh load, adopted
    /// maps, or a sync that failed halfway), in which case the next sync reads the
    /// tries and rebuilds the fast table from them.
    applied: Option<BTreeMap<IpNet, u32>>,
}

/// Fails unless every interface exists, naming the ones that do.
pub(crate) fn check_interfaces(interfaces: &[Interface]) -> Result<(), DatapathError> {
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

/// An attach error with what the kernel's errno means for XDP, and what to do.
fn describe_attach_error(error: ProgramError) -> String {
    let errno = match &error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    let hint = match errno {
        Some(libc::ERANGE) => {
            "; the interface's MTU is larger than its driver supports for native XDP: lower the MTU, or set mode = \"skb\" (or \"auto\", which falls back to it)"
        }
        Some(libc::EBUSY | libc::EEXIST) => {
            "; the interface already has another XDP program attached (`ip -d link show dev <interface>`): allowlist does not replace it, detach it first"
        }
        Some(libc::EOPNOTSUPP) => "; the driver has no native XDP: set mode = \"skb\" or \"auto\"",
        _ => "",
    };
    format!("{:#}{hint}", anyhow::Error::from(error))
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
    /// Loads the program with its maps pinned under `pin_dir` (made ready by
    /// [`pins::prepare_pin_dir`]), reusing the maps a previous agent pinned there.
    /// Attaches nothing yet.
    pub(crate) fn load(pin_dir: &Path, options: &LoadOptions) -> Result<Self, DatapathError> {
        pins::check_ownership(pin_dir)?;
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
        let mut filter = Self {
            ebpf,
            maps,
            pin_dir: pin_dir.to_owned(),
            fresh,
            interfaces: Vec::new(),
            program_id: 0,
            applied: None,
        };
        filter.program_id = filter
            .program()?
            .info()
            .map_err(DatapathError::Program)?
            .id();
        Ok(filter)
    }

    /// Whether this load found a previous agent's maps.
    pub(crate) fn adopted_maps(&self) -> bool {
        !self.fresh
    }

    pub(crate) fn maps(&self) -> &Maps {
        &self.maps
    }

    pub(crate) fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// Every configured interface and how it stands, as of the last attach or check.
    pub(crate) fn interfaces(&self) -> &[InterfaceState] {
        &self.interfaces
    }

    /// Start-up: attaches to every interface in `interfaces` through a pinned link, or
    /// fails. An existing link (a previous agent's) gets this program atomically;
    /// otherwise a new link is created and pinned. If this load created the pins and
    /// an interface cannot be attached, every pin is removed again: a failed start
    /// leaves nothing behind. Links to interfaces no longer listed are unpinned last.
    pub(crate) fn attach(&mut self, interfaces: &[Interface]) -> Result<(), DatapathError> {
        self.reconcile(interfaces);
        if let Some(failed) = self.interfaces.iter().find(|i| !i.attached) {
            let error = DatapathError::Attach {
                interface: failed.name.clone(),
                reason: failed.error.clone().unwrap_or_default(),
            };
            if self.fresh {
                let _ = pins::remove_all(&self.pin_dir);
            }
            return Err(error);
        }
        // From here on the pins are this filter's: nothing removes them but
        // `remove_pins` (detach).
        self.fresh = false;
        Ok(())
    }

    /// Brings every interface in `interfaces` under the filter where it can, and
    /// records how each stands: a link that was detached or whose device was deleted
    /// and re-created is attached afresh, a renamed device is followed (its link
    /// stays; a pin is moved to the name the configuration now uses), an interface
    /// that cannot be attached is reported in its state. Protection is never reduced
    /// to get there: links of interfaces no longer configured are removed only when
    /// every configured interface is attached. Returns the interfaces whose state
    /// changed, with their previous state.
    pub(crate) fn reconcile(
        &mut self,
        interfaces: &[Interface],
    ) -> Vec<(Option<InterfaceState>, InterfaceState)> {
        let previous = std::mem::take(&mut self.interfaces);
        let mut states = Vec::with_capacity(interfaces.len());
        for spec in interfaces {
            let before = previous.iter().find(|p| p.name == spec.name);
            let mut state = self.ensure(spec, interfaces);
            if state.attached && before.is_some_and(|b| b.attached && b.adopted) {
                state.adopted = true;
            }
            states.push(state);
        }
        if states.iter().all(|s| s.attached) {
            self.remove_stale_links(interfaces);
        }
        let changes = states
            .iter()
            .filter_map(|state| {
                let before = previous.iter().find(|p| p.name == state.name);
                (before != Some(state)).then(|| (before.cloned(), state.clone()))
            })
            .collect();
        self.interfaces = states;
        changes
    }

    fn remove_stale_links(&self, interfaces: &[Interface]) {
        let wanted: BTreeSet<&str> = interfaces.iter().map(|s| s.name.as_str()).collect();
        for stale in pins::pinned_links(&self.pin_dir).unwrap_or_default() {
            if wanted.contains(stale.as_str()) {
                continue;
            }
            let path = pins::link_pin(&self.pin_dir, &stale);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(interface = %stale, "detached from an interface no longer configured")
                }
                Err(e) => {
                    tracing::warn!(interface = %stale, error = %e, "cannot remove the link of an interface no longer configured")
                }
            }
        }
    }

    /// One interface: keep, adopt, follow or (re)create its link.
    fn ensure(&mut self, spec: &Interface, all: &[Interface]) -> InterfaceState {
        let pin = pins::link_pin(&self.pin_dir, &spec.name);
        let device = link::ifindex(&spec.name);
        let defunct = match link::read(&pin) {
            Ok(LinkState {
                ifindex: Some(on), ..
            }) if device.is_some_and(|d| d != on) => {
                let now = link::ifname(on).unwrap_or_else(|| format!("ifindex {on}"));
                return InterfaceState::failed(
                    spec,
                    format!(
                        "{} is now another device (ifindex {}): the filter follows the device it attached to (ifindex {on}, now called {now}); put {now} in `interfaces` too, then reload",
                        spec.name,
                        device.unwrap_or(0)
                    ),
                );
            }
            Ok(LinkState {
                ifindex: Some(on),
                program_id,
                ..
            }) => return self.keep(spec, &pin, on, program_id),
            Ok(LinkState { ifindex: None, .. }) => Some(
                "the filter's link was detached (the device was deleted, or `bpftool link detach`)"
                    .to_owned(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(state) = self.follow(spec, device, all) {
                    return state;
                }
                None
            }
            Err(e) => Some(format!("the pinned link is unusable ({e})")),
        };
        // A pin whose link filters nothing goes, and the interface is attached afresh.
        if let Some(why) = defunct {
            tracing::warn!(interface = %spec.name, "{why}; attaching afresh");
            if let Err(e) = std::fs::remove_file(&pin) {
                return InterfaceState::failed(
                    spec,
                    format!(
                        "{why}, and its pin {} cannot be removed: {e}",
                        pin.display()
                    ),
                );
            }
        }
        let Some(ifindex) = device else {
            return InterfaceState::failed(
                spec,
                format!(
                    "interface {} does not exist (interfaces here: {})",
                    spec.name,
                    available_interfaces()
                ),
            );
        };
        match self.attach_new(spec, &pin) {
            Ok(mode) => {
                tracing::info!(interface = %spec.name, %mode, "attached");
                InterfaceState {
                    attached: true,
                    ifindex: Some(ifindex),
                    ..InterfaceState::new(spec)
                }
            }
            Err(e) => InterfaceState::failed(spec, format!("{:#}", anyhow::Error::from(e))),
        }
    }

    /// A live link: runs this program (swapped in atomically if another build's runs).
    fn keep(&mut self, spec: &Interface, pin: &Path, on: u32, program_id: u32) -> InterfaceState {
        let mut adopted = false;
        if program_id != self.program_id {
            if let Err(e) = self.replace_in_link(pin) {
                return InterfaceState::failed(
                    spec,
                    format!(
                        "cannot put this program into the pinned link {}: {:#}",
                        pin.display(),
                        anyhow::Error::from(e)
                    ),
                );
            }
            tracing::info!(interface = %spec.name, "adopted the pinned XDP link");
            adopted = true;
        }
        let now = link::ifname(on).filter(|n| *n != spec.name);
        InterfaceState {
            attached: true,
            adopted,
            ifindex: Some(on),
            now_named: now,
            ..InterfaceState::new(spec)
        }
    }

    /// No link is pinned for `spec`: if another of this filter's links is on that very
    /// device (it was renamed, and the configuration now uses its new name), the pin
    /// moves to the new name and the link is kept.
    fn follow(
        &mut self,
        spec: &Interface,
        device: Option<u32>,
        all: &[Interface],
    ) -> Option<InterfaceState> {
        let device = device?;
        for other in pins::pinned_links(&self.pin_dir).ok()? {
            if other == spec.name {
                continue;
            }
            // A configured interface that still has its own device keeps its link.
            if all.iter().any(|s| s.name == other) && link::ifindex(&other).is_some() {
                continue;
            }
            let from = pins::link_pin(&self.pin_dir, &other);
            let Ok(state) = link::read(&from) else {
                continue;
            };
            if state.ifindex != Some(device) {
                continue;
            }
            let to = pins::link_pin(&self.pin_dir, &spec.name);
            if let Err(e) = std::fs::rename(&from, &to) {
                return Some(InterfaceState::failed(
                    spec,
                    format!(
                        "cannot move the pin {} to {}: {e}",
                        from.display(),
                        to.display()
                    ),
                ));
            }
            tracing::info!(interface = %spec.name, was = %other, "the device was renamed; its link follows it");
            let mut state = self.keep(spec, &to, device, state.program_id);
            state.adopted = true;
            return Some(state);
        }
        None
    }

    fn program(&mut self) -> Result<&mut Xdp, DatapathError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DatapathError::MissingProgram(PROGRAM_NAME))?
            .try_into()
            .map_err(DatapathError::Program)
    }

    /// Attaches through a new link and pins it. `auto` falls back to generic (skb)
    /// XDP where the driver refuses native XDP (at MTU 9000, say).
    fn attach_new(&mut self, spec: &Interface, pin: &Path) -> Result<AttachMode, DatapathError> {
        let name = spec.name.clone();
        let program = self.program()?;
        let (link_id, mode) = match program.attach(&name, xdp_mode(spec.mode)) {
            Ok(id) => (id, spec.mode),
            Err(native) if spec.mode == AttachMode::Auto => {
                let id = program.attach(&name, XdpMode::Skb).map_err(|source| {
                    DatapathError::AttachMode {
                        interface: name.clone(),
                        mode: spec.mode,
                        detail: format!(
                            "native: {}; generic (skb): {}",
                            describe_attach_error(native),
                            describe_attach_error(source)
                        ),
                    }
                })?;
                tracing::warn!(interface = %name, "native XDP refused by the driver (MTU above what it supports with XDP, or no XDP support); attached in generic (skb) mode");
                (id, AttachMode::Skb)
            }
            Err(source) => {
                return Err(DatapathError::AttachMode {
                    interface: name.clone(),
                    mode: spec.mode,
                    detail: describe_attach_error(source),
                });
            }
        };
        let link = program.take_link(link_id).map_err(DatapathError::Program)?;
        let fd_link =
            FdLink::try_from(link).map_err(|_| DatapathError::NoLinkSupport(name.clone()))?;
        fd_link.pin(pin).map_err(|source| DatapathError::PinLink {
            path: pin.to_owned(),
            source,
        })?;
        Ok(mode)
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
    pub(crate) fn sync(
        &mut self,
        desired: &BTreeMap<IpNet, u32>,
    ) -> Result<SyncReport, DatapathError> {
        let report = match self.applied.take() {
            Some(applied) => sync::apply(&mut self.maps, &applied, desired)?,
            None => sync::resync(&mut self.maps, desired)?,
        };
        self.applied = Some(desired.clone());
        Ok(report)
    }

    /// What the tries hold: as last written, or read back after a sync that failed
    /// halfway.
    pub(crate) fn entries(&self) -> Result<BTreeMap<IpNet, u32>, DatapathError> {
        match &self.applied {
            Some(applied) => Ok(applied.clone()),
            None => self.maps.live_entries(),
        }
    }

    /// Removes every pin: with the agent gone, the program detaches.
    pub(crate) fn remove_pins(&self) -> Result<Vec<PathBuf>, DatapathError> {
        pins::remove_all(&self.pin_dir)
    }
}
