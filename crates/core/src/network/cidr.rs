//! `Cidr`: an IPv4 network (first address and prefix), its arithmetic and its text form.

use super::*;

/// An IPv4 network: its first address and prefix length. Serialized as `"10.88.0.0/16"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    base: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    pub fn base(&self) -> Ipv4Addr {
        self.base
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.base)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// The address at `offset` from the base.
    pub fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base).wrapping_add(offset))
    }

    /// The offset of `ip` when it is a usable host address (not the network or broadcast
    /// address) of this network.
    pub fn host_offset(&self, ip: Ipv4Addr) -> Option<u32> {
        if !self.contains(ip) {
            return None;
        }
        let off = u32::from(ip) - u32::from(self.base);
        (off >= 1 && off <= self.last_host()).then_some(off)
    }

    /// Offset of the last usable host address (the one before broadcast).
    pub fn last_host(&self) -> u32 {
        u32::try_from(self.size() - 2).unwrap_or(u32::MAX)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Parses `A.B.C.D/P`: a private network address (host bits zero), prefix 8 to 29.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown = spec::truncate_for_message(s);
        let bad = |why: &str| format!("invalid CIDR '{shown}': {why}");
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("write it as A.B.C.D/PREFIX, e.g. 10.88.0.0/16"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("the prefix must be a number"))?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(bad(&format!(
                "the prefix must be between {MIN_PREFIX} and {MAX_PREFIX}"
            )));
        }
        let base = Ipv4Addr::from(u32::from(ip) & mask(prefix));
        if base != ip {
            return Err(bad(&format!(
                "host bits are set; did you mean {base}/{prefix}?"
            )));
        }
        let cidr = Cidr { base, prefix };
        let private = PRIVATE.iter().any(|(b, p)| {
            *p <= prefix
                && Cidr {
                    base: *b,
                    prefix: *p,
                }
                .contains(base)
        });
        if !private {
            return Err(bad("use a private range: inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10"));
        }
        Ok(cidr)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
