//! Fuzz target for the conversions of decoded gRPC messages: every wire
//! duration is a value or an INVALID_ARGUMENT message, never a panic, and
//! a command passes through whatever its name and payload.

use proptest::prelude::*;

use super::convert;
use crate::fuzzing::config;
use crate::proto::v1 as pb;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_wire_duration_converts_or_is_refused(seconds in any::<i64>(), nanos in any::<i32>()) {
        let d = prost_types::Duration { seconds, nanos };
        match convert::from_duration(Some(d)) {
            Ok(Some(got)) => {
                prop_assert!(seconds >= 0 && nanos >= 0);
                prop_assert_eq!(got.as_secs(), seconds as u64 + nanos as u64 / 1_000_000_000);
            }
            Ok(None) => prop_assert!(false, "a set duration converted to none"),
            Err(message) => {
                prop_assert!(seconds < 0 || nanos < 0);
                prop_assert!(message.contains("negative"));
            }
        }
    }

    #[test]
    fn any_command_converts(name in ".{0,64}", payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let c = convert::command(pb::Command { name: name.clone(), payload: payload.clone() });
        prop_assert_eq!(c.name, name);
        prop_assert_eq!(c.payload, payload);
    }
}
