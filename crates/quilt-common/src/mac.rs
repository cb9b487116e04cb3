//! The one MAC address type of the workspace: six octets, parsed from and printed as
//! `aa:bb:cc:dd:ee:ff`, and carried by serde as that string.

use std::fmt;
use std::str::FromStr;

use crate::cluster::excerpt;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

/// Why a string is not a MAC address; names the value (at most 64 characters of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a MAC address like 02:42:ac:11:00:02")]
pub struct MacParseError {
    pub value: String,
}

impl Mac {
    /// The six octets.
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether the group bit is clear (a single station, not multicast or broadcast).
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0
    }

    /// Whether every octet is zero.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    /// A random locally administered unicast MAC (from /dev/urandom).
    pub fn random_local() -> std::io::Result<Self> {
        use std::io::Read;
        let mut bytes = [0u8; 6];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        Ok(Mac(bytes))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = MacParseError;

    /// Six colon-separated pairs of hex digits, either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacParseError { value: excerpt(s) };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(bytes))
    }
}

impl From<[u8; 6]> for Mac {
    fn from(bytes: [u8; 6]) -> Self {
        Mac(bytes)
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print_in_lowercase() {
        let mac: Mac = "02:42:AC:11:00:02".parse().unwrap();
        assert_eq!(mac, Mac([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]));
        assert_eq!(mac.to_string(), "02:42:ac:11:00:02");
        assert!(mac.is_unicast() && !mac.is_zero());
        assert!(!"01:00:5e:00:00:01".parse::<Mac>().unwrap().is_unicast());
        assert!("00:00:00:00:00:00".parse::<Mac>().unwrap().is_zero());
    }

    #[test]
    fn a_refusal_names_the_value() {
        for input in [
            "02:42:ac:11:00",
            "02-42-ac-11-00-02",
            "zz:42:ac:11:00:02",
            "+2:42:ac:11:00:02",
            "02:42:ac:11:00:02:03",
            "",
        ] {
            let err = input.parse::<Mac>().unwrap_err().to_string();
            assert_eq!(
                err,
                format!("{input:?} is not a MAC address like 02:42:ac:11:00:02")
            );
        }
    }

    #[test]
    fn serde_carries_the_printed_form() {
        let mac = Mac([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"0a:1b:2c:3d:4e:5f\"");
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), mac);
        let err = serde_json::from_str::<Mac>("\"zz\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"zz\" is not a MAC address"), "{err}");
    }

    #[test]
    fn random_macs_are_locally_administered_unicast() {
        let random = Mac::random_local().unwrap();
        assert_eq!(random.0[0] & 0x03, 0x02);
    }
}
