//! Property tests of the RFC 2217 codec: every well-formed item survives
//! encode -> decode whatever the chunking, and garbage never panics the
//! decoder nor grows its buffer past the cap.

use proptest::prelude::*;
use tandem_serial_gw::rfc2217::*;

fn command() -> impl Strategy<Value = ComPortCommand> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(ComPortCommand::Signature),
        any::<u32>().prop_map(ComPortCommand::SetBaudRate),
        any::<u8>().prop_map(ComPortCommand::SetBaudRateLegacy),
        any::<u8>().prop_map(ComPortCommand::SetDataSize),
        any::<u8>().prop_map(ComPortCommand::SetParity),
        any::<u8>().prop_map(ComPortCommand::SetStopSize),
        any::<u8>().prop_map(ComPortCommand::SetControl),
        any::<Option<u8>>().prop_map(ComPortCommand::NotifyLineState),
        any::<Option<u8>>().prop_map(ComPortCommand::NotifyModemState),
        Just(ComPortCommand::FlowControlSuspend),
        Just(ComPortCommand::FlowControlResume),
        any::<u8>().prop_map(ComPortCommand::SetLineStateMask),
        any::<u8>().prop_map(ComPortCommand::SetModemStateMask),
        any::<u8>().prop_map(ComPortCommand::PurgeData),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    let verb = prop_oneof![
        Just(Verb::Will),
        Just(Verb::Wont),
        Just(Verb::Do),
        Just(Verb::Dont)
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Item::Data),
        (verb, any::<u8>()).prop_map(|(verb, option)| Item::Negotiation { verb, option }),
        // Two-byte commands other than the ones with their own meaning.
        (241u8..250).prop_map(Item::Command),
        (command(), any::<bool>()).prop_map(|(command, server)| Item::ComPort(ComPortMessage {
            direction: if server {
                Direction::ServerToClient
            } else {
                Direction::ClientToServer
            },
            command,
        })),
        (
            any::<u8>().prop_filter("not COM-PORT", |o| *o != OPT_COM_PORT),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(option, body)| Item::Subnegotiation { option, body }),
    ]
}

/// Adjacent data items merge on decode; merge them in the expectation too.
fn merged(items: &[Item]) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::new();
    for it in items {
        match (out.last_mut(), it) {
            (Some(Item::Data(prev)), Item::Data(d)) => prev.extend_from_slice(d),
            _ => out.push(it.clone()),
        }
    }
    out
}

proptest! {
    #[test]
    fn round_trip_in_any_chunking(items in proptest::collection::vec(item(), 0..20),
                                  cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let mut wire = Vec::new();
        for it in &items {
            encode_item(it, &mut wire);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.sort_unstable();
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        let mut at = 0;
        for p in points.into_iter().chain(std::iter::once(wire.len())) {
            decoder.decode(&wire[at..p], &mut out);
            at = p;
        }
        prop_assert_eq!(out, merged(&items));
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn data_escaping_round_trips(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut wire = Vec::new();
        encode_data(&data, &mut wire);
        prop_assert_eq!(wire.len(), data.len() + data.iter().filter(|b| **b == IAC).count());
        let mut out = Vec::new();
        Decoder::default().decode(&wire, &mut out);
        let got: Vec<u8> = out.into_iter().flat_map(|i| match i {
            Item::Data(d) => d,
            other => panic!("unexpected {other:?}"),
        }).collect();
        prop_assert_eq!(got, data);
    }

    #[test]
    fn garbage_never_panics_and_stays_bounded(
        chunks in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![any::<u8>(), Just(IAC), Just(SB), Just(SE), Just(44u8)], 0..200),
            0..8),
        cap in 1usize..64,
    ) {
        let mut decoder = Decoder::new(cap);
        let mut out = Vec::new();
        for c in &chunks {
            decoder.decode(c, &mut out);
            prop_assert!(decoder.buffered() <= cap);
        }
        // Whatever state the garbage left the decoder in, the stream
        // recovers: two IAC SE end any pending subnegotiation (the first may
        // be read as an escaped IAC inside one), and data after them decodes.
        let mut tail = vec![IAC, SE, IAC, SE];
        encode_item(&Item::Data(vec![b'z']), &mut tail);
        out.clear();
        decoder.decode(&tail, &mut out);
        let ends_with_z = matches!(out.last(), Some(Item::Data(d)) if d.last() == Some(&b'z'));
        prop_assert!(ends_with_z, "{:?}", out);
    }
}
