//! Pod cgroups laid out as the kubelet (systemd driver) and containerd lay
//! them out, below a test cgroup that stands for the node's root:
//! `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/
//! cri-containerd-<id>.scope`.

use std::io;

use crate::cgroup::Cgroup;

/// `kubepods.slice` and its QoS tiers.
pub struct Kubepods {
    // Children first: each guard removes its own tree.
    besteffort: Cgroup,
    burstable: Cgroup,
    pub slice: Cgroup,
}

/// A pod's QoS tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    BestEffort,
    Burstable,
}

/// One pod with one container.
pub struct PodCgroups {
    /// The container's cgroup: where its processes run.
    pub container: Cgroup,
    /// The pod's cgroup.
    pub pod: Cgroup,
    pub uid: String,
    /// The container ID as the kubelet reports it (`containerd://<id>`).
    pub container_id: String,
}

impl Kubepods {
    pub fn new(under: &Cgroup) -> io::Result<Kubepods> {
        let slice = under.child("kubepods.slice")?;
        Ok(Kubepods {
            besteffort: slice.child("kubepods-besteffort.slice")?,
            burstable: slice.child("kubepods-burstable.slice")?,
            slice,
        })
    }

    /// A pod's cgroups; `n` makes its UID and container ID unique.
    pub fn pod(&self, qos: Qos, n: u32) -> io::Result<PodCgroups> {
        let uid = format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id());
        let id = format!("{:0>64}", format!("{:x}c{n:x}", std::process::id()));
        let (tier, name) = match qos {
            Qos::BestEffort => (&self.besteffort, "besteffort"),
            Qos::Burstable => (&self.burstable, "burstable"),
        };
        let pod = tier.child(&format!("kubepods-{name}-pod{}.slice", uid.replace('-', "_")))?;
        let container = pod.child(&format!("cri-containerd-{id}.scope"))?;
        Ok(PodCgroups {
            container,
            pod,
            uid,
            container_id: format!("containerd://{id}"),
        })
    }
}
