//! The job's memory limit: `--max-memory`, else, in a cgroup with a memory limit (a
//! container with `limits.memory`), that limit less what the runner keeps for itself.
//! A [`Limiter`] in the job's store refuses any growth of the job's linear memories and
//! tables beyond it: the job's allocation fails (`memory.grow` returns -1) and it traps
//! or fails on its own terms, long before the kernel's OOM killer would pick the runner.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::human::format_size;

/// What the runner keeps for itself under a cgroup's limit: its own heap, wasmtime's
/// data for the job, the job's compiled code and the copy of a checkpoint it commits.
/// Measured at 20-40 MiB for a Rust, Python or JavaScript job (see README, "Memory").
pub const RUNNER_MARGIN: u64 = 64 << 20;

/// The bytes each element of a table counts for (a pointer).
const TABLE_ELEMENT: u64 = size_of::<usize>() as u64;

/// How much memory the job may have, and where that figure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxMemory {
    /// Bytes of linear memory and tables, all of the job's instances together.
    pub bytes: u64,
    /// Where the figure comes from.
    pub source: Source,
}

/// Where a [`MaxMemory`] comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--max-memory` (or `RUNNER_MAX_MEMORY`).
    Flag,
    /// The cgroup's memory limit, less [`RUNNER_MARGIN`].
    Cgroup(CgroupLimit),
}

impl MaxMemory {
    /// The job's limit in a cgroup with `limit`: the limit less [`RUNNER_MARGIN`], but
    /// at least half of it (in a container of 128 MiB or less).
    pub fn from_cgroup(limit: CgroupLimit) -> MaxMemory {
        MaxMemory {
            bytes: limit
                .bytes
                .saturating_sub(RUNNER_MARGIN)
                .max(limit.bytes / 2),
            source: Source::Cgroup(limit),
        }
    }

    /// What to change for the job to get more.
    pub fn advice(&self) -> &'static str {
        match self.source {
            Source::Flag => "raise --max-memory, or make the job use less",
            Source::Cgroup(_) => {
                "raise the container's memory limit (Kubernetes: resources.limits.memory), \
                 or make the job use less"
            }
        }
    }
}

impl fmt::Display for MaxMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Flag => write!(f, "--max-memory {}", format_size(self.bytes)),
            Source::Cgroup(cgroup) => write!(
                f,
                "the job's limit of {} (the cgroup's memory limit, {} in `{}`, less {} kept \
                 for the runner)",
                format_size(self.bytes),
                format_size(cgroup.bytes),
                cgroup.file.display(),
                format_size(cgroup.bytes - self.bytes)
            ),
        }
    }
}

/// The memory limit of the cgroup the runner is in: the lowest set on the way from its
/// cgroup up to the root of the hierarchy (a pod's limit is on a parent of the
/// container's cgroup on some nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimit {
    /// The limit, in bytes.
    pub bytes: u64,
    /// The file that sets it (`memory.max`, or `memory.limit_in_bytes` in cgroup v1).
    pub file: PathBuf,
}

/// The runner's cgroup memory limit, from cgroup v2 and v1's memory controller alike
/// (the lower of the two on a node that mounts both), if it has one.
pub fn cgroup_limit() -> Option<CgroupLimit> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_limit_in(&mountinfo, &cgroups, &|path| {
        std::fs::read_to_string(path).ok()
    })
}

/// [`cgroup_limit`] from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`,
/// reading the limit files through `read`.
fn cgroup_limit_in(
    mountinfo: &str,
    cgroups: &str,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Option<CgroupLimit> {
    let mut lowest: Option<CgroupLimit> = None;
    for (version, path) in cgroups.lines().filter_map(cgroup_path) {
        let Some((root, mount_point)) = mountinfo
            .lines()
            .find_map(|line| cgroup_mount(line, version))
        else {
            continue;
        };
        // The mount shows the hierarchy from `root` on: a container's cgroup is often
        // the mount itself.
        let relative = Path::new(path).strip_prefix(&root).unwrap_or(Path::new(""));
        let mut dir = mount_point.join(relative);
        loop {
            let file = dir.join(version.limit_file());
            if let Some(bytes) = read(&file).and_then(|text| version.parse_limit(&text))
                && lowest.as_ref().is_none_or(|lowest| bytes < lowest.bytes)
            {
                lowest = Some(CgroupLimit { bytes, file });
            }
            if dir == mount_point || !dir.pop() || !dir.starts_with(&mount_point) {
                break;
            }
        }
    }
    lowest
}

/// A cgroup hierarchy that may hold a memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// The unified hierarchy.
    V2,
    /// cgroup v1's memory controller.
    V1,
}

impl Version {
    fn limit_file(self) -> &'static str {
        match self {
            Version::V2 => "memory.max",
            Version::V1 => "memory.limit_in_bytes",
        }
    }

    /// The limit a limit file sets, if any: v2 says `max` for none, v1 a number near
    /// 2^63 rounded to pages.
    fn parse_limit(self, text: &str) -> Option<u64> {
        let bytes: u64 = text.trim().parse().ok()?;
        (bytes < 1 << 62).then_some(bytes)
    }
}

/// The hierarchy and path of a line of `/proc/self/cgroup` that may hold a memory
/// limit: `0::PATH` (v2) or `N:...memory...:PATH` (v1).
fn cgroup_path(line: &str) -> Option<(Version, &str)> {
    let mut fields = line.splitn(3, ':');
    let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
    if id == "0" && controllers.is_empty() {
        Some((Version::V2, path))
    } else if controllers.split(',').any(|name| name == "memory") {
        Some((Version::V1, path))
    } else {
        None
    }
}

/// The root and mount point of a line of `/proc/self/mountinfo`, if it mounts the
/// `version` hierarchy.
fn cgroup_mount(line: &str, version: Version) -> Option<(String, PathBuf)> {
    let (mount, filesystem) = line.split_once(" - ")?;
    let mut mount = mount.split(' ');
    let (root, mount_point) = (mount.nth(3)?, mount.next()?);
    let mut filesystem = filesystem.split(' ');
    let (kind, options) = (filesystem.next()?, filesystem.nth(1)?);
    let matches = match version {
        Version::V2 => kind == "cgroup2",
        Version::V1 => kind == "cgroup" && options.split(',').any(|name| name == "memory"),
    };
    matches.then(|| (unescape(root), PathBuf::from(unescape(mount_point))))
}

/// A path of `/proc/self/mountinfo`, whose spaces, tabs, newlines and backslashes are
/// written as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let mut text = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        text.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(byte) => {
                text.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                text.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    text.push_str(rest);
    text
}

/// The limiter of the job's store: counts the bytes of every linear memory and table
/// the job creates or grows, and the runner's copies of its checkpoints, and refuses
/// growth that would pass the limit.
///
/// A growth it allows that then fails (past a memory's own maximum) still counts, which
/// errs on the safe side; memories are only freed with the store.
#[derive(Debug, Default)]
pub struct Limiter {
    max: Option<MaxMemory>,
    /// The bytes of the job's memories and tables.
    used: u64,
    /// The bytes the runner holds for the job's checkpoints.
    held: u64,
    /// What the job had asked for in all when the limiter first refused it.
    refused: Option<u64>,
}

impl Limiter {
    /// A limiter that allows up to `max`, or everything.
    pub fn new(max: Option<MaxMemory>) -> Self {
        Limiter {
            max,
            used: 0,
            held: 0,
            refused: None,
        }
    }

    /// Notes that the runner holds `bytes` for the job's checkpoints (two states: the
    /// last saved and a buffer for the next), which count against its limit.
    pub fn hold(&mut self, bytes: u64) {
        self.held = bytes;
    }

    /// Counts `more` bytes of the job's, unless they pass the limit.
    fn grow(&mut self, more: u64) -> bool {
        let wanted = self.used.saturating_add(more);
        match &self.max {
            Some(max) if wanted.saturating_add(self.held) > max.bytes => {
                self.refused.get_or_insert(wanted.saturating_add(self.held));
                false
            }
            _ => {
                self.used = wanted;
                true
            }
        }
    }

    /// If the limit refused the job memory: a line that says so, names the limit and
    /// says what to raise.
    pub fn refusal(&self) -> Option<String> {
        let (max, wanted) = (self.max.as_ref()?, self.refused?);
        let copies = match self.held {
            0 => String::new(),
            held => format!(
                ", {} of it the runner's copies of its checkpoints",
                format_size(held)
            ),
        };
        Some(format!(
            "the job ran out of memory: it asked for {} in all, more than {max} allows ({} \
             in use{copies}); {}",
            format_size(wanted),
            format_size(self.used + self.held),
            max.advice()
        ))
    }
}

impl Limiter {
    /// A memory or table growing from `current` to `desired` units of `unit` bytes.
    /// Called before wasmtime checks the memory's or table's own `maximum`: a growth
    /// past it fails anyway, and must not count.
    fn growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
        unit: u64,
    ) -> bool {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return false;
        }
        self.grow((desired.saturating_sub(current) as u64).saturating_mul(unit))
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.growing(current, desired, maximum, 1))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.growing(current, desired, maximum, TABLE_ELEMENT))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(path, text)| (PathBuf::from(path), (*text).to_owned()))
            .collect();
        move |path| map.get(path).cloned()
    }

    const V1_MOUNT: &str = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup \
                            rw,memory\n32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";

    #[test]
    fn a_v1_limit_is_the_lowest_on_the_way_up() {
        let cgroups = "1:cpu:/\n4:memory:/pods/pod1/c1\n0::/";
        let read = files(&[
            (
                "/sys/fs/cgroup/memory/pods/pod1/c1/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/pods/pod1/memory.limit_in_bytes",
                "536870912\n",
            ),
            (
                "/sys/fs/cgroup/memory/pods/memory.limit_in_bytes",
                "1073741824\n",
            ),
        ]);
        let limit = cgroup_limit_in(V1_MOUNT, cgroups, &read).expect("test value");
        assert_eq!(limit.bytes, 512 << 20);
        assert_eq!(
            limit.file,
            Path::new("/sys/fs/cgroup/memory/pods/pod1/memory.limit_in_bytes")
        );
    }

    #[test]
    fn an_unlimited_cgroup_has_no_limit() {
        let read = files(&[(
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712",
        )]);
        assert_eq!(cgroup_limit_in(V1_MOUNT, "4:memory:/", &read), None);
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate";
        let read = files(&[("/sys/fs/cgroup/a/memory.max", "max\n")]);
        assert_eq!(cgroup_limit_in(v2, "0::/a", &read), None);
    }

    #[test]
    fn a_v2_container_sees_its_cgroup_as_the_mount() {
        // A cgroup namespace, or a mount of the container's own cgroup: the path in
        // /proc/self/cgroup is not under the mount.
        let mountinfo = "30 23 0:26 /kubepods/pod1/c1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw";
        let read = files(&[("/sys/fs/cgroup/memory.max", "268435456\n")]);
        let limit = cgroup_limit_in(mountinfo, "0::/kubepods/pod1/c1", &read).expect("test value");
        assert_eq!(limit.bytes, 256 << 20);
        assert_eq!(limit.file, Path::new("/sys/fs/cgroup/memory.max"));
        let limit = cgroup_limit_in(mountinfo, "0::/", &read).expect("test value");
        assert_eq!(limit.bytes, 256 << 20);
    }

    #[test]
    fn mount_points_are_unescaped() {
        let mountinfo = r"30 23 0:26 / /cg\040two rw - cgroup2 cgroup2 rw";
        let read = files(&[("/cg two/job/memory.max", "1048576")]);
        assert_eq!(
            cgroup_limit_in(mountinfo, "0::/job", &read)
                .expect("test value")
                .bytes,
            1 << 20
        );
    }

    #[test]
    fn the_limiter_refuses_past_the_limit_and_says_so() {
        let mut limiter = Limiter::new(Some(MaxMemory {
            bytes: 10 << 20,
            source: Source::Flag,
        }));
        assert!(limiter.grow(6 << 20));
        assert_eq!(limiter.refusal(), None);
        assert!(!limiter.grow(6 << 20));
        assert!(limiter.grow(4 << 20));
        let refusal = limiter.refusal().expect("test value");
        assert!(refusal.contains("12 MiB in all"), "{refusal}");
        assert!(refusal.contains("--max-memory 10 MiB"), "{refusal}");
        limiter.hold(1 << 20);
        assert!(!limiter.grow(1));
        assert!(
            limiter
                .refusal()
                .expect("test value")
                .contains("(11 MiB in use, 1 MiB of it the runner's"),
            "{}",
            limiter.refusal().expect("test value")
        );
        let mut unlimited = Limiter::new(None);
        unlimited.hold(u64::MAX);
        assert!(unlimited.grow(u64::MAX));
    }
}
