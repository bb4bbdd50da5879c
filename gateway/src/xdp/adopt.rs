//! Adopting the maps a stopped (or crashed) gateway left pinned, so bans,
//! budgets, kernel state and counters survive a restart or an upgrade.
//!
//! Generic over [`map_names::ALL`]: a pinned map is reused as is only when
//! its kernel shape (type, key and value size, entries, flags) is exactly
//! what the embedded object defines; otherwise the new program gets a fresh
//! map and the old one's entries are carried into it where they fit (same
//! key size, values cut or zero-padded: fields are only ever appended).
//! Event channels (ring buffers, perf arrays) are never adopted: each
//! program has its own.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::EbpfLoader;
use gateway_common::maps as map_names;

use super::{
    bpfsys::{self, map_type, MapShape},
    MapSizes, XdpError, OBJECT,
};

/// The sizes the gateway overrides at load time, by map name.
pub(super) fn max_entries(sizes: MapSizes) -> [(&'static str, u32); 6] {
    [
        (map_names::BANS, sizes.bans),
        (map_names::BUDGETS, sizes.budgets),
        (map_names::STATE, sizes.state),
        (map_names::ALLOW, sizes.allow),
        (map_names::PREFIX_BANS, sizes.prefix_bans),
        (map_names::PREFIX_BUDGETS, sizes.prefix_budgets),
    ]
}

/// The shape the embedded object gives each of its maps after overrides.
fn expected_shapes(sizes: MapSizes) -> Result<HashMap<&'static str, MapShape>, XdpError> {
    let object = aya_obj::Object::parse(OBJECT)
        .map_err(|error| XdpError::MissingObject(format!("a parsable object ({error})")))?;
    let overrides = max_entries(sizes);
    let mut shapes = HashMap::new();
    for name in map_names::ALL {
        let map = object
            .maps
            .get(name)
            .ok_or_else(|| XdpError::MissingObject(format!("map {name}")))?;
        let max_entries = overrides
            .iter()
            .find(|(overridden, _)| *overridden == name)
            .map_or(map.max_entries(), |(_, size)| *size);
        shapes.insert(
            name,
            MapShape {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries,
                map_flags: map.map_flags(),
            },
        );
    }
    Ok(shapes)
}

/// A pinned map whose shape changed: its pin is gone (the loader pins a
/// fresh one there), its descriptor kept to carry its entries.
struct Replaced {
    name: &'static str,
    old: OwnedFd,
    old_shape: MapShape,
}

/// What to do with each map under the pin root.
pub(super) struct Adoption {
    /// Maps reused as they are.
    pub adopted: Vec<&'static str>,
    replaced: Vec<Replaced>,
    /// Maps the loader reuses or creates at their pin path.
    pinned: Vec<&'static str>,
}

impl Adoption {
    /// Looks at every pin under `root` and decides; removes the pins of
    /// maps that cannot be reused (the old program, if still attached,
    /// keeps its maps until it is replaced).
    pub fn plan(root: &Path, sizes: MapSizes) -> Result<Self, XdpError> {
        let shapes = expected_shapes(sizes)?;
        let mut plan = Adoption {
            adopted: Vec::new(),
            replaced: Vec::new(),
            pinned: Vec::new(),
        };
        for name in map_names::ALL {
            let Some(expected) = shapes.get(name).copied() else {
                continue;
            };
            if map_type::channel(expected.map_type) {
                continue;
            }
            plan.pinned.push(name);
            let path = root.join(name);
            let old = match bpfsys::obj_get(&path) {
                Ok(fd) => fd,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(XdpError::Adopt { path, source }),
            };
            let old_shape = bpfsys::map_shape(old.as_fd()).map_err(|source| XdpError::Adopt {
                path: path.clone(),
                source,
            })?;
            if old_shape == expected {
                plan.adopted.push(name);
                continue;
            }
            tracing::warn!(
                map = name,
                old = ?old_shape,
                new = ?expected,
                "pinned map has another layout than this version's: recreating it"
            );
            remove_pin(&path)?;
            plan.replaced.push(Replaced {
                name,
                old,
                old_shape,
            });
        }
        remove_unknown_maps(root)?;
        Ok(plan)
    }

    /// Has anything been left by a previous gateway?
    pub fn found_pins(&self) -> bool {
        !self.adopted.is_empty() || !self.replaced.is_empty()
    }

    /// Tells the loader to reuse (or create and pin) each map at its pin.
    pub fn configure(&self, root: &Path, loader: &mut EbpfLoader<'_>) {
        for name in &self.pinned {
            loader.map_pin_path(name, root.join(name));
        }
    }

    /// Copies the entries of every replaced map into its fresh one (after
    /// the load pinned it), with a warning saying what was kept.
    pub fn carry(self, root: &Path) {
        for Replaced {
            name,
            old,
            old_shape,
        } in self.replaced
        {
            let carried = bpfsys::obj_get(&root.join(name)).and_then(|new| {
                let new_shape = bpfsys::map_shape(new.as_fd())?;
                let fits = old_shape.key_size == new_shape.key_size
                    && map_type::entries_fit(old_shape.map_type, new_shape.map_type)
                    && !map_type::per_cpu(old_shape.map_type);
                if !fits {
                    return Ok(None);
                }
                bpfsys::copy_entries(old.as_fd(), old_shape, new.as_fd(), new_shape).map(Some)
            });
            match carried {
                Ok(Some((copied, 0))) => {
                    tracing::warn!(map = name, copied, "carried entries into the new map")
                }
                Ok(Some((copied, refused))) => tracing::warn!(
                    map = name,
                    copied,
                    refused,
                    "carried entries into the new map; the rest did not fit"
                ),
                Ok(None) => tracing::warn!(
                    map = name,
                    "its entries cannot be carried (key or type changed, or per-CPU): starting empty"
                ),
                Err(error) => tracing::warn!(map = name, %error, "carrying entries failed"),
            }
        }
    }
}

/// Removes the pin at `path`, if there is one.
pub(super) fn remove_pin(path: &Path) -> Result<(), XdpError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(XdpError::RemoveStale {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Maps an older version pinned that this one no longer defines.
fn remove_unknown_maps(root: &Path) -> Result<(), XdpError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("GW_") && !map_names::ALL.contains(&name.as_ref()) {
            tracing::warn!(map = %name, "removing a pinned map this version does not use");
            remove_pin(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes everything a gateway pins under `root`: detaches its link (the
/// program leaves the interface), unpins program and maps, and removes
/// the directory if that leaves it empty. Returns whether a link was there.
pub fn remove_pins(root: &Path) -> Result<bool, XdpError> {
    let link = root.join(gateway_common::LINK_PIN);
    let detached = bpfsys::remove_pinned_link(&link).map_err(|source| XdpError::RemoveStale {
        path: link.clone(),
        source,
    })?;
    for name in map_names::ALL
        .iter()
        .copied()
        .chain([gateway_common::PROGRAM_PIN])
    {
        remove_pin(&root.join(name))?;
    }
    // Only succeeds when empty, which is what we want.
    let _ = std::fs::remove_dir(root);
    Ok(detached)
}
