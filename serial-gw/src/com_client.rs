//! The client side of RFC 2217, sans-IO: what connect mode says to a device
//! server and what it makes of the answers.
//!
//! It negotiates as pyserial does (SGA both ways, COM-PORT-OPTION both
//! ways), plus BINARY, and refuses every other option. The answers a server
//! sends are recorded field by field ([`Answered`]): they are the settings
//! in effect on the far device, which is what status reports, never an echo
//! of what was asked.

use crate::com_port::{FlowControl, LineSettings, Parity, StopBits};
use crate::rfc2217::{
    control, encode_com_port, encode_data, encode_negotiation, legacy_baud_rate, ComPortCommand,
    ComPortMessage, Decoder, Direction, Item, Malformed, Verb, OPT_BINARY, OPT_COM_PORT, OPT_SGA,
};

/// The server's answers so far; `None` until that field is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answered {
    pub baud: Option<u32>,
    pub data_bits: Option<u8>,
    pub parity: Option<Parity>,
    pub stop_bits: Option<StopBits>,
    pub flow: Option<FlowControl>,
    pub dtr: Option<bool>,
    pub rts: Option<bool>,
    /// The last NOTIFY-MODEMSTATE value.
    pub modem: Option<u8>,
}

impl Answered {
    /// True once the four line settings and flow control are answered:
    /// every RFC 2217 server answers these (ser2net on a pty does not
    /// answer DTR and RTS, so they are not waited for).
    pub fn line_complete(&self) -> bool {
        self.baud.is_some()
            && self.data_bits.is_some()
            && self.parity.is_some()
            && self.stop_bits.is_some()
            && self.flow.is_some()
    }

    /// `base` with every answered field replaced by the answer.
    pub fn over(&self, base: &LineSettings) -> LineSettings {
        LineSettings {
            baud: self.baud.unwrap_or(base.baud),
            data_bits: self.data_bits.unwrap_or(base.data_bits),
            parity: self.parity.unwrap_or(base.parity),
            stop_bits: self.stop_bits.unwrap_or(base.stop_bits),
            flow: self.flow.unwrap_or(base.flow),
            dtr: self.dtr.unwrap_or(base.dtr),
            rts: self.rts.unwrap_or(base.rts),
            brk: base.brk,
        }
    }
}

/// Bytes out of one step.
#[derive(Debug, Default)]
pub struct ClientOutput {
    /// Payload for the local side (the pty, the TCP client).
    pub data: Vec<u8>,
    /// Telnet replies for the server.
    pub to_server: Vec<u8>,
    pub malformed: Vec<Malformed>,
}

/// One device-server session's RFC 2217 client state.
#[derive(Debug)]
pub struct ComPortClient {
    decoder: Decoder,
    /// Options we said WILL to and the server agreed (or asked for).
    we: [bool; 256],
    /// Options we said DO to and the server agreed (or offered).
    they: [bool; 256],
    /// The server agreed to COM-PORT-OPTION (DO or WILL).
    com_port: bool,
    answered: Answered,
    /// COM-PORT messages received from the server, for health checks.
    answers: u64,
    items: Vec<Item>,
}

impl Default for ComPortClient {
    fn default() -> Self {
        ComPortClient::new()
    }
}

fn parity_code(p: Parity) -> u8 {
    match p {
        Parity::None => 1,
        Parity::Odd => 2,
        Parity::Even => 3,
        Parity::Mark => 4,
        Parity::Space => 5,
    }
}

fn stop_code(s: StopBits) -> u8 {
    match s {
        StopBits::One => 1,
        StopBits::Two => 2,
        StopBits::OnePointFive => 3,
    }
}

fn flow_code(f: FlowControl) -> u8 {
    match f {
        FlowControl::None => control::FLOW_NONE,
        FlowControl::XonXoff => control::FLOW_XONXOFF,
        FlowControl::Hardware => control::FLOW_HARDWARE,
    }
}

impl ComPortClient {
    pub fn new() -> ComPortClient {
        ComPortClient {
            decoder: Decoder::default(),
            we: [false; 256],
            they: [false; 256],
            com_port: false,
            answered: Answered::default(),
            answers: 0,
            items: Vec::new(),
        }
    }

    /// The opening negotiation.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        for option in [OPT_BINARY, OPT_SGA, OPT_COM_PORT] {
            encode_negotiation(Verb::Will, option, out);
            encode_negotiation(Verb::Do, option, out);
        }
    }

    /// The server agreed to COM-PORT-OPTION.
    pub fn com_port_agreed(&self) -> bool {
        self.com_port
    }

    pub fn answered(&self) -> &Answered {
        &self.answered
    }

    /// COM-PORT messages received so far.
    pub fn answers(&self) -> u64 {
        self.answers
    }

    fn send(command: ComPortCommand, out: &mut Vec<u8>) {
        encode_com_port(
            &ComPortMessage {
                direction: Direction::ClientToServer,
                command,
            },
            out,
        );
    }

    /// Requests every field of `wanted` that differs from `before` (all of
    /// them when `before` is `None`).
    pub fn request_settings(
        &mut self,
        wanted: &LineSettings,
        before: Option<&LineSettings>,
        out: &mut Vec<u8>,
    ) {
        use ComPortCommand as C;
        let changed = |same: fn(&LineSettings, &LineSettings) -> bool| {
            !before.is_some_and(|b| same(b, wanted))
        };
        if changed(|a, b| a.baud == b.baud) {
            Self::send(C::SetBaudRate(wanted.baud), out);
        }
        if changed(|a, b| a.data_bits == b.data_bits) {
            Self::send(C::SetDataSize(wanted.data_bits), out);
        }
        if changed(|a, b| a.parity == b.parity) {
            Self::send(C::SetParity(parity_code(wanted.parity)), out);
        }
        if changed(|a, b| a.stop_bits == b.stop_bits) {
            Self::send(C::SetStopSize(stop_code(wanted.stop_bits)), out);
        }
        if changed(|a, b| a.flow == b.flow) {
            Self::send(C::SetControl(flow_code(wanted.flow)), out);
        }
        if changed(|a, b| a.dtr == b.dtr) {
            let v = if wanted.dtr {
                control::DTR_ON
            } else {
                control::DTR_OFF
            };
            Self::send(C::SetControl(v), out);
        }
        if changed(|a, b| a.rts == b.rts) {
            let v = if wanted.rts {
                control::RTS_ON
            } else {
                control::RTS_OFF
            };
            Self::send(C::SetControl(v), out);
        }
    }

    /// The health question: "which baud rate is in effect?" (a SET-BAUDRATE
    /// of 0). Every server answers it and it changes nothing.
    pub fn query(&mut self, out: &mut Vec<u8>) {
        Self::send(ComPortCommand::SetBaudRate(0), out);
    }

    /// Payload for the server, IAC escaped.
    pub fn data(&self, data: &[u8], out: &mut Vec<u8>) {
        encode_data(data, out);
    }

    /// Bytes from the server.
    pub fn from_server(&mut self, bytes: &[u8], out: &mut ClientOutput) {
        let mut items = std::mem::take(&mut self.items);
        items.clear();
        self.decoder.decode(bytes, &mut items);
        for item in items.drain(..) {
            match item {
                Item::Data(d) => out.data.extend_from_slice(&d),
                Item::Negotiation { verb, option } => self.negotiate(verb, option, out),
                Item::ComPort(ComPortMessage {
                    direction: Direction::ServerToClient,
                    command,
                }) => self.answer(command),
                Item::ComPort(_) | Item::Subnegotiation { .. } | Item::Command(_) => {}
                Item::Malformed(m) => out.malformed.push(m),
            }
        }
        self.items = items;
    }

    fn negotiate(&mut self, verb: Verb, option: u8, out: &mut ClientOutput) {
        let supported = matches!(option, OPT_BINARY | OPT_SGA | OPT_COM_PORT);
        let i = option as usize;
        // We asked for every supported option in `start`, so an agreement
        // needs no reply; only a refusal or an unsupported offer does.
        match verb {
            Verb::Do if supported => self.we[i] = true,
            Verb::Do => encode_negotiation(Verb::Wont, option, &mut out.to_server),
            Verb::Will if supported => self.they[i] = true,
            Verb::Will => encode_negotiation(Verb::Dont, option, &mut out.to_server),
            Verb::Dont => self.we[i] = false,
            Verb::Wont => self.they[i] = false,
        }
        if option == OPT_COM_PORT && matches!(verb, Verb::Do | Verb::Will) {
            self.com_port = true;
        }
    }

    fn answer(&mut self, command: ComPortCommand) {
        use ComPortCommand as C;
        self.answers += 1;
        let a = &mut self.answered;
        match command {
            C::SetBaudRate(b) if b > 0 => a.baud = Some(b),
            C::SetBaudRateLegacy(i) => {
                if let Some(b) = legacy_baud_rate(i) {
                    a.baud = Some(b);
                }
            }
            C::SetDataSize(d) if (5..=8).contains(&d) => a.data_bits = Some(d),
            C::SetParity(p) => {
                a.parity = match p {
                    1 => Some(Parity::None),
                    2 => Some(Parity::Odd),
                    3 => Some(Parity::Even),
                    4 => Some(Parity::Mark),
                    5 => Some(Parity::Space),
                    _ => a.parity,
                }
            }
            C::SetStopSize(s) => {
                a.stop_bits = match s {
                    1 => Some(StopBits::One),
                    2 => Some(StopBits::Two),
                    3 => Some(StopBits::OnePointFive),
                    _ => a.stop_bits,
                }
            }
            C::SetControl(v) => match v {
                control::FLOW_NONE | control::INBOUND_FLOW_NONE => a.flow = Some(FlowControl::None),
                control::FLOW_XONXOFF | control::INBOUND_FLOW_XONXOFF => {
                    a.flow = Some(FlowControl::XonXoff)
                }
                control::FLOW_HARDWARE | control::INBOUND_FLOW_HARDWARE => {
                    a.flow = Some(FlowControl::Hardware)
                }
                control::DTR_ON => a.dtr = Some(true),
                control::DTR_OFF => a.dtr = Some(false),
                control::RTS_ON => a.rts = Some(true),
                control::RTS_OFF => a.rts = Some(false),
                _ => {}
            },
            C::NotifyModemState(Some(m)) => a.modem = Some(m),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::com_port::{ComPortServer, Detached, Output};

    /// The client against tandem's own server state machine: the opening,
    /// every setting, the answers recorded, data both ways.
    #[test]
    fn against_the_serve_mode_state_machine() {
        let mut server = ComPortServer::new(LineSettings::default(), "far");
        let mut client = ComPortClient::new();
        let mut wire = Vec::new();
        client.start(&mut wire);
        let wanted = LineSettings {
            baud: 115200,
            data_bits: 7,
            parity: Parity::Even,
            stop_bits: StopBits::Two,
            flow: FlowControl::Hardware,
            dtr: false,
            rts: true,
            brk: false,
        };
        client.request_settings(&wanted, None, &mut wire);
        client.data(&[1, 255, 2], &mut wire);
        let mut sout = Output::default();
        server.from_client(&wire, &mut Detached, &mut sout);
        assert_eq!(sout.to_device, vec![1, 255, 2]);
        server.from_device(&[255, 9], &mut sout);
        let mut cout = ClientOutput::default();
        client.from_server(&sout.to_client, &mut cout);
        assert!(client.com_port_agreed());
        assert!(cout.to_server.is_empty(), "{:?}", cout.to_server);
        assert!(cout.malformed.is_empty());
        assert_eq!(cout.data, vec![255, 9]);
        assert!(client.answered().line_complete());
        assert_eq!(client.answered().over(&LineSettings::default()), wanted);
        assert!(client.answered().modem.is_some());

        // Only the change is sent; the health query is answered.
        let mut wire = Vec::new();
        let mut again = wanted;
        again.baud = 9600;
        client.request_settings(&again, Some(&wanted), &mut wire);
        let before = client.answers();
        client.query(&mut wire);
        let mut sout = Output::default();
        server.from_client(&wire, &mut Detached, &mut sout);
        let mut cout = ClientOutput::default();
        client.from_server(&sout.to_client, &mut cout);
        assert_eq!(client.answers(), before + 2);
        assert_eq!(client.answered().baud, Some(9600));
    }

    #[test]
    fn unsupported_options_are_refused_once() {
        let mut client = ComPortClient::new();
        let mut cout = ClientOutput::default();
        // ser2net offers ECHO.
        client.from_server(&[255, 251, 1, 255, 253, 24], &mut cout);
        assert_eq!(cout.to_server, vec![255, 254, 1, 255, 252, 24]);
        assert!(!client.com_port_agreed());
    }
}
