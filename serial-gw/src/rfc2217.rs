//! RFC 2217 (Telnet COM-PORT-OPTION) over RFC 854/855 telnet, sans-IO.
//!
//! The codec only splits bytes into data and telnet commands and back; it
//! never touches a socket or a device, so every byte sequence a peer could
//! send can be tested and fuzzed without one. The decoder is a small state
//! machine fed arbitrary chunks: a command may be cut anywhere by TCP, and a
//! peer may send anything, so it never panics and never grows without bound
//! (a subnegotiation longer than [`SUBNEGOTIATION_BYTES_MAX`] is reported and
//! skipped, not buffered).
//!
//! A malformed command is reported inline as [`Item::Malformed`] and the
//! stream goes on: one bad subnegotiation from a peer is no reason to drop a
//! serial session, and the caller decides what to log.
//!
//! RFC 2217 gives every COM-PORT command two codes: `code` from the client
//! (the access server's user) and `100 + code` from the server. The decoder
//! keeps that distinction in [`Direction`] so that one codec serves both the
//! serve mode (tandem as the server) and the connect mode (tandem as the
//! client of a device server).

use std::fmt;

/// Telnet "interpret as command".
pub const IAC: u8 = 255;
pub const DONT: u8 = 254;
pub const DO: u8 = 253;
pub const WONT: u8 = 252;
pub const WILL: u8 = 251;
/// Subnegotiation begin.
pub const SB: u8 = 250;
/// Subnegotiation end.
pub const SE: u8 = 240;
pub const NOP: u8 = 241;

/// Telnet options tandem cares about.
pub const OPT_BINARY: u8 = 0;
pub const OPT_ECHO: u8 = 1;
pub const OPT_SGA: u8 = 3;
pub const OPT_COM_PORT: u8 = 44;

/// The longest subnegotiation body (option byte included, IAC unescaped)
/// the decoder keeps. The longest legitimate COM-PORT body is a SIGNATURE;
/// 256 bytes is far beyond any real one.
pub const SUBNEGOTIATION_BYTES_MAX: usize = 256;

/// Offset RFC 2217 adds to a command code when the server sends it.
pub const SERVER_CODE_OFFSET: u8 = 100;

/// SET-CONTROL values (RFC 2217 §"SET-CONTROL").
pub mod control {
    pub const FLOW_QUERY: u8 = 0;
    pub const FLOW_NONE: u8 = 1;
    pub const FLOW_XONXOFF: u8 = 2;
    pub const FLOW_HARDWARE: u8 = 3;
    pub const BREAK_QUERY: u8 = 4;
    pub const BREAK_ON: u8 = 5;
    pub const BREAK_OFF: u8 = 6;
    pub const DTR_QUERY: u8 = 7;
    pub const DTR_ON: u8 = 8;
    pub const DTR_OFF: u8 = 9;
    pub const RTS_QUERY: u8 = 10;
    pub const RTS_ON: u8 = 11;
    pub const RTS_OFF: u8 = 12;
    pub const INBOUND_FLOW_QUERY: u8 = 13;
    pub const INBOUND_FLOW_NONE: u8 = 14;
    pub const INBOUND_FLOW_XONXOFF: u8 = 15;
    pub const INBOUND_FLOW_HARDWARE: u8 = 16;
}

/// PURGE-DATA values.
pub mod purge {
    pub const RECEIVE: u8 = 1;
    pub const TRANSMIT: u8 = 2;
    pub const BOTH: u8 = 3;
}

/// NOTIFY-MODEMSTATE bits.
pub mod modem {
    pub const DELTA_CTS: u8 = 0x01;
    pub const DELTA_DSR: u8 = 0x02;
    pub const TRAILING_EDGE_RI: u8 = 0x04;
    pub const DELTA_CD: u8 = 0x08;
    pub const CTS: u8 = 0x10;
    pub const DSR: u8 = 0x20;
    pub const RI: u8 = 0x40;
    pub const CD: u8 = 0x80;
}

/// Who sent a COM-PORT command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Codes 0..=12: a request from the client.
    ClientToServer,
    /// Codes 100..=112: an answer or notification from the server.
    ServerToClient,
}

/// WILL / WONT / DO / DONT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Will,
    Wont,
    Do,
    Dont,
}

impl Verb {
    pub fn byte(self) -> u8 {
        match self {
            Verb::Will => WILL,
            Verb::Wont => WONT,
            Verb::Do => DO,
            Verb::Dont => DONT,
        }
    }

    fn from_byte(b: u8) -> Option<Verb> {
        match b {
            WILL => Some(Verb::Will),
            WONT => Some(Verb::Wont),
            DO => Some(Verb::Do),
            DONT => Some(Verb::Dont),
            _ => None,
        }
    }
}

/// The body of a COM-PORT-OPTION subnegotiation. A value of 0 in the
/// setting commands is a query ("tell me the value in effect").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComPortCommand {
    /// Empty from the client: "send me your signature".
    Signature(Vec<u8>),
    /// The 4-byte form, network byte order.
    SetBaudRate(u32),
    /// The 1-byte legacy (Cisco IOS) form: an index, see [`legacy_baud_rate`].
    SetBaudRateLegacy(u8),
    SetDataSize(u8),
    SetParity(u8),
    SetStopSize(u8),
    SetControl(u8),
    /// `None`: a poll without a value (pyserial's `poll_modem` sends one).
    NotifyLineState(Option<u8>),
    NotifyModemState(Option<u8>),
    FlowControlSuspend,
    FlowControlResume,
    SetLineStateMask(u8),
    SetModemStateMask(u8),
    PurgeData(u8),
}

impl ComPortCommand {
    /// The client-side code (0..=12).
    pub fn code(&self) -> u8 {
        match self {
            ComPortCommand::Signature(_) => 0,
            ComPortCommand::SetBaudRate(_) | ComPortCommand::SetBaudRateLegacy(_) => 1,
            ComPortCommand::SetDataSize(_) => 2,
            ComPortCommand::SetParity(_) => 3,
            ComPortCommand::SetStopSize(_) => 4,
            ComPortCommand::SetControl(_) => 5,
            ComPortCommand::NotifyLineState(_) => 6,
            ComPortCommand::NotifyModemState(_) => 7,
            ComPortCommand::FlowControlSuspend => 8,
            ComPortCommand::FlowControlResume => 9,
            ComPortCommand::SetLineStateMask(_) => 10,
            ComPortCommand::SetModemStateMask(_) => 11,
            ComPortCommand::PurgeData(_) => 12,
        }
    }

    /// The value bytes after the code, unescaped.
    pub fn value_bytes(&self) -> Vec<u8> {
        match self {
            ComPortCommand::Signature(s) => s.clone(),
            ComPortCommand::SetBaudRate(b) => b.to_be_bytes().to_vec(),
            ComPortCommand::SetBaudRateLegacy(v)
            | ComPortCommand::SetDataSize(v)
            | ComPortCommand::SetParity(v)
            | ComPortCommand::SetStopSize(v)
            | ComPortCommand::SetControl(v)
            | ComPortCommand::SetLineStateMask(v)
            | ComPortCommand::SetModemStateMask(v)
            | ComPortCommand::PurgeData(v) => vec![*v],
            ComPortCommand::NotifyLineState(v) | ComPortCommand::NotifyModemState(v) => {
                v.iter().copied().collect()
            }
            ComPortCommand::FlowControlSuspend | ComPortCommand::FlowControlResume => Vec::new(),
        }
    }

    /// Parses a code (already stripped of the direction offset) and value.
    fn parse(code: u8, value: &[u8]) -> Result<ComPortCommand, Malformed> {
        let one = |make: fn(u8) -> ComPortCommand| match value {
            [v] => Ok(make(*v)),
            _ => Err(Malformed::BadLength {
                code,
                len: value.len(),
            }),
        };
        let optional = |make: fn(Option<u8>) -> ComPortCommand| match value {
            [] => Ok(make(None)),
            [v] => Ok(make(Some(*v))),
            _ => Err(Malformed::BadLength {
                code,
                len: value.len(),
            }),
        };
        let none = |cmd: ComPortCommand| {
            if value.is_empty() {
                Ok(cmd)
            } else {
                Err(Malformed::BadLength {
                    code,
                    len: value.len(),
                })
            }
        };
        match code {
            0 => Ok(ComPortCommand::Signature(value.to_vec())),
            1 => match value {
                [a, b, c, d] => Ok(ComPortCommand::SetBaudRate(u32::from_be_bytes([
                    *a, *b, *c, *d,
                ]))),
                [v] => Ok(ComPortCommand::SetBaudRateLegacy(*v)),
                _ => Err(Malformed::BadLength {
                    code,
                    len: value.len(),
                }),
            },
            2 => one(ComPortCommand::SetDataSize),
            3 => one(ComPortCommand::SetParity),
            4 => one(ComPortCommand::SetStopSize),
            5 => one(ComPortCommand::SetControl),
            6 => optional(ComPortCommand::NotifyLineState),
            7 => optional(ComPortCommand::NotifyModemState),
            8 => none(ComPortCommand::FlowControlSuspend),
            9 => none(ComPortCommand::FlowControlResume),
            10 => one(ComPortCommand::SetLineStateMask),
            11 => one(ComPortCommand::SetModemStateMask),
            12 => one(ComPortCommand::PurgeData),
            _ => Err(Malformed::UnknownCode(code)),
        }
    }
}

/// Cisco IOS 1-byte baud indexes, as ser2net and gensio map them.
const LEGACY_BAUD_RATES: [(u8, u32); 11] = [
    (3, 300),
    (4, 600),
    (5, 1200),
    (6, 2400),
    (7, 4800),
    (8, 9600),
    (10, 19200),
    (12, 38400),
    (13, 57600),
    (14, 115200),
    (15, 230400),
];

/// The baud rate a 1-byte legacy SET-BAUDRATE index stands for.
pub fn legacy_baud_rate(index: u8) -> Option<u32> {
    LEGACY_BAUD_RATES
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, b)| *b)
}

/// The 1-byte legacy index of a baud rate, if it has one.
pub fn legacy_baud_index(baud: u32) -> Option<u8> {
    LEGACY_BAUD_RATES
        .iter()
        .find(|(_, b)| *b == baud)
        .map(|(i, _)| *i)
}

/// A COM-PORT command with its direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComPortMessage {
    pub direction: Direction,
    pub command: ComPortCommand,
}

/// Why a command from the peer was refused. The stream continues after it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("subnegotiation longer than {max} bytes")]
    SubnegotiationTooLong { max: usize },
    #[error("COM-PORT command {code} with a {len}-byte value")]
    BadLength { code: u8, len: usize },
    #[error("unknown COM-PORT command code {0}")]
    UnknownCode(u8),
    #[error("empty subnegotiation")]
    EmptySubnegotiation,
    #[error("IAC followed by {0} inside a subnegotiation")]
    BadIacInSubnegotiation(u8),
}

/// One unit of a decoded telnet stream, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// Payload bytes, IAC IAC already unescaped.
    Data(Vec<u8>),
    /// WILL/WONT/DO/DONT `option`.
    Negotiation {
        verb: Verb,
        option: u8,
    },
    /// Any other two-byte command (NOP, BRK, AYT, ...).
    Command(u8),
    /// A COM-PORT-OPTION subnegotiation.
    ComPort(ComPortMessage),
    /// A subnegotiation for another option, body without the option byte.
    Subnegotiation {
        option: u8,
        body: Vec<u8>,
    },
    Malformed(Malformed),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Data,
    Iac,
    Verb(Verb),
    Sub,
    SubIac,
    /// Skipping an overlong subnegotiation until IAC SE.
    Skip,
    SkipIac,
}

/// The streaming decoder. Feed it chunks in order; items come out in order.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    sub: Vec<u8>,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(SUBNEGOTIATION_BYTES_MAX)
    }
}

impl Decoder {
    /// `subnegotiation_bytes_max` bounds what one subnegotiation may buffer.
    pub fn new(subnegotiation_bytes_max: usize) -> Decoder {
        Decoder {
            state: State::Data,
            sub: Vec::new(),
            max: subnegotiation_bytes_max.max(1),
        }
    }

    /// Bytes held for an unfinished subnegotiation; never above the cap.
    pub fn buffered(&self) -> usize {
        self.sub.len()
    }

    /// Decodes `input`, appending items to `out`. Consecutive data bytes are
    /// merged into one [`Item::Data`].
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<Item>) {
        for &b in input {
            match self.state {
                State::Data => {
                    if b == IAC {
                        self.state = State::Iac;
                    } else {
                        push_data(out, b);
                    }
                }
                State::Iac => {
                    self.state = State::Data;
                    match b {
                        IAC => push_data(out, IAC),
                        SB => {
                            self.sub.clear();
                            self.state = State::Sub;
                        }
                        _ => match Verb::from_byte(b) {
                            Some(v) => self.state = State::Verb(v),
                            None => out.push(Item::Command(b)),
                        },
                    }
                }
                State::Verb(verb) => {
                    out.push(Item::Negotiation { verb, option: b });
                    self.state = State::Data;
                }
                State::Sub => {
                    if b == IAC {
                        self.state = State::SubIac;
                    } else {
                        self.push_sub(b, out);
                    }
                }
                State::SubIac => match b {
                    IAC => {
                        self.state = State::Sub;
                        self.push_sub(IAC, out);
                    }
                    SE => {
                        self.state = State::Data;
                        out.push(self.finish_sub());
                    }
                    other => {
                        // RFC 855 leaves this undefined; treat the
                        // subnegotiation as ended and the command as a
                        // fresh one, so one broken peer cannot swallow the
                        // rest of the stream.
                        self.sub.clear();
                        out.push(Item::Malformed(Malformed::BadIacInSubnegotiation(other)));
                        self.state = State::Iac;
                        self.decode(&[other], out);
                    }
                },
                State::Skip => {
                    if b == IAC {
                        self.state = State::SkipIac;
                    }
                }
                State::SkipIac => {
                    self.state = match b {
                        SE => State::Data,
                        _ => State::Skip,
                    };
                }
            }
        }
    }

    fn push_sub(&mut self, b: u8, out: &mut Vec<Item>) {
        if self.sub.len() >= self.max {
            self.sub.clear();
            self.state = State::Skip;
            out.push(Item::Malformed(Malformed::SubnegotiationTooLong {
                max: self.max,
            }));
        } else {
            self.sub.push(b);
        }
    }

    fn finish_sub(&mut self) -> Item {
        let body = std::mem::take(&mut self.sub);
        let Some((&option, rest)) = body.split_first() else {
            return Item::Malformed(Malformed::EmptySubnegotiation);
        };
        if option != OPT_COM_PORT {
            return Item::Subnegotiation {
                option,
                body: rest.to_vec(),
            };
        }
        let Some((&code, value)) = rest.split_first() else {
            return Item::Malformed(Malformed::EmptySubnegotiation);
        };
        let (direction, code) = if code >= SERVER_CODE_OFFSET {
            (Direction::ServerToClient, code - SERVER_CODE_OFFSET)
        } else {
            (Direction::ClientToServer, code)
        };
        match ComPortCommand::parse(code, value) {
            Ok(command) => Item::ComPort(ComPortMessage { direction, command }),
            Err(Malformed::UnknownCode(_)) => {
                let raw = match direction {
                    Direction::ClientToServer => code,
                    Direction::ServerToClient => code.saturating_add(SERVER_CODE_OFFSET),
                };
                Item::Malformed(Malformed::UnknownCode(raw))
            }
            Err(e) => Item::Malformed(e),
        }
    }
}

fn push_data(out: &mut Vec<Item>, b: u8) {
    if let Some(Item::Data(d)) = out.last_mut() {
        d.push(b);
    } else {
        out.push(Item::Data(vec![b]));
    }
}

/// Appends `data` with every IAC doubled.
pub fn encode_data(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len());
    for &b in data {
        if b == IAC {
            out.push(IAC);
        }
        out.push(b);
    }
}

/// Appends IAC `verb` `option`.
pub fn encode_negotiation(verb: Verb, option: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, verb.byte(), option]);
}

/// Appends IAC `command` (NOP and the like).
pub fn encode_command(command: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, command]);
}

/// Appends IAC SB `option` `body` IAC SE with IACs in the body doubled.
pub fn encode_subnegotiation(option: u8, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, SB]);
    encode_data(&[option], out);
    encode_data(body, out);
    out.extend_from_slice(&[IAC, SE]);
}

/// Appends a COM-PORT-OPTION subnegotiation in the given direction.
pub fn encode_com_port(message: &ComPortMessage, out: &mut Vec<u8>) {
    let code = match message.direction {
        Direction::ClientToServer => message.command.code(),
        Direction::ServerToClient => message.command.code() + SERVER_CODE_OFFSET,
    };
    let mut body = Vec::with_capacity(6);
    body.push(code);
    body.extend_from_slice(&message.command.value_bytes());
    encode_subnegotiation(OPT_COM_PORT, &body, out);
}

/// Encodes one item as it would appear on the wire (the inverse of the
/// decoder for every well-formed item).
pub fn encode_item(item: &Item, out: &mut Vec<u8>) {
    match item {
        Item::Data(d) => encode_data(d, out),
        Item::Negotiation { verb, option } => encode_negotiation(*verb, *option, out),
        Item::Command(c) => encode_command(*c, out),
        Item::ComPort(m) => encode_com_port(m, out),
        Item::Subnegotiation { option, body } => encode_subnegotiation(*option, body, out),
        Item::Malformed(_) => {}
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::Will => "WILL",
            Verb::Wont => "WONT",
            Verb::Do => "DO",
            Verb::Dont => "DONT",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Item> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.decode(bytes, &mut out);
        out
    }

    #[test]
    fn data_with_escaped_iac() {
        assert_eq!(
            decode_all(&[1, IAC, IAC, 2]),
            vec![Item::Data(vec![1, IAC, 2])]
        );
    }

    #[test]
    fn pyserial_set_baudrate() {
        // What pyserial sends for 115200 baud.
        let bytes = [IAC, SB, 44, 1, 0, 1, 0xc2, 0, IAC, SE];
        assert_eq!(
            decode_all(&bytes),
            vec![Item::ComPort(ComPortMessage {
                direction: Direction::ClientToServer,
                command: ComPortCommand::SetBaudRate(115200),
            })]
        );
    }

    #[test]
    fn legacy_baud_form() {
        let items = decode_all(&[IAC, SB, 44, 1, 8, IAC, SE]);
        assert_eq!(
            items,
            vec![Item::ComPort(ComPortMessage {
                direction: Direction::ClientToServer,
                command: ComPortCommand::SetBaudRateLegacy(8),
            })]
        );
        assert_eq!(legacy_baud_rate(8), Some(9600));
        assert_eq!(legacy_baud_index(115200), Some(14));
    }

    #[test]
    fn server_direction_and_escaped_value() {
        // A modem state of 0xff must be sent as IAC IAC inside the SB.
        let msg = ComPortMessage {
            direction: Direction::ServerToClient,
            command: ComPortCommand::NotifyModemState(Some(0xff)),
        };
        let mut wire = Vec::new();
        encode_com_port(&msg, &mut wire);
        assert_eq!(wire, vec![IAC, SB, 44, 107, IAC, IAC, IAC, SE]);
        assert_eq!(decode_all(&wire), vec![Item::ComPort(msg)]);
    }

    #[test]
    fn overlong_subnegotiation_is_refused_and_skipped() {
        let mut d = Decoder::new(8);
        let mut out = Vec::new();
        d.decode(&[IAC, SB, 44, 0], &mut out);
        d.decode(&[b'x'; 100], &mut out);
        assert!(d.buffered() <= 8);
        d.decode(&[IAC, SE, b'k'], &mut out);
        assert_eq!(
            out,
            vec![
                Item::Malformed(Malformed::SubnegotiationTooLong { max: 8 }),
                Item::Data(vec![b'k'])
            ]
        );
    }

    #[test]
    fn bad_lengths_and_codes() {
        assert_eq!(
            decode_all(&[IAC, SB, 44, 2, IAC, SE]),
            vec![Item::Malformed(Malformed::BadLength { code: 2, len: 0 })]
        );
        assert_eq!(
            decode_all(&[IAC, SB, 44, 113, 1, IAC, SE]),
            vec![Item::Malformed(Malformed::UnknownCode(113))]
        );
        assert_eq!(
            decode_all(&[IAC, SB, IAC, SE]),
            vec![Item::Malformed(Malformed::EmptySubnegotiation)]
        );
    }

    #[test]
    fn split_anywhere() {
        let mut wire = Vec::new();
        encode_negotiation(Verb::Will, OPT_COM_PORT, &mut wire);
        encode_com_port(
            &ComPortMessage {
                direction: Direction::ClientToServer,
                command: ComPortCommand::SetControl(control::DTR_ON),
            },
            &mut wire,
        );
        encode_data(&[IAC, 7], &mut wire);
        let whole = decode_all(&wire);
        for cut in 0..=wire.len() {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            d.decode(&wire[..cut], &mut out);
            d.decode(&wire[cut..], &mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }
}
