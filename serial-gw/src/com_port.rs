//! The server side of RFC 2217: telnet option state and the answer to every
//! COM-PORT request, as a state machine over a [`DeviceControl`].
//!
//! Kept apart from the sockets so the exact bytes a client gets for each
//! request can be tested against a fake device. Two rules shape it:
//!
//! - Every request is answered with the value *in effect* after trying to
//!   apply it, read back from the device, never with an echo of the request.
//!   A client (pyserial) compares the answer with what it asked and fails
//!   loudly on a mismatch, which is what an operator wants when a device
//!   cannot do what the application needs. When no device is open (it
//!   vanished and is being reopened) the requested values are what will be
//!   applied at reopen, so they are the answer.
//! - Telnet options are answered only on a change of state (RFC 854's rule
//!   against negotiation loops); options other than BINARY, SGA and
//!   COM-PORT-OPTION are refused.
//!
//! A device with no modem control lines (a pty standing in for a cable)
//! cannot report CTS/DSR/CD. It is then presented as a virtual null-modem
//! cable, as tty0tty wires one: CTS follows our RTS, DSR and CD follow our
//! DTR, so applications that wait for the lines still work.

use crate::rfc2217::{
    control, encode_com_port, encode_data, encode_negotiation, legacy_baud_index, legacy_baud_rate,
    modem, ComPortCommand, ComPortMessage, Decoder, Direction, Item, Malformed, Verb, OPT_BINARY,
    OPT_COM_PORT, OPT_SGA,
};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Odd,
    Even,
    Mark,
    Space,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopBits {
    One,
    OnePointFive,
    Two,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    None,
    XonXoff,
    Hardware,
}

/// Everything a client can set on the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LineSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: StopBits,
    pub flow: FlowControl,
    pub dtr: bool,
    pub rts: bool,
    #[serde(rename = "break")]
    pub brk: bool,
}

impl Default for LineSettings {
    fn default() -> Self {
        LineSettings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: StopBits::One,
            flow: FlowControl::None,
            dtr: true,
            rts: true,
            brk: false,
        }
    }
}

/// What the COM-PORT server needs from the serial device.
pub trait DeviceControl {
    /// Applies `wanted` as far as the device allows and returns what is now
    /// in effect. Refusals are the implementation's to log.
    fn apply(&mut self, wanted: &LineSettings) -> LineSettings;
    /// The CTS/DSR/RI/CD bits ([`modem::CTS`]...) now, or `None` for a
    /// device without modem lines.
    fn modem_lines(&mut self) -> Option<u8>;
    /// PURGE-DATA: [`crate::rfc2217::purge`] values.
    fn purge(&mut self, which: u8);
}

/// The device is away (vanished, being reopened): requests are remembered
/// and applied at reopen.
pub struct Detached;

impl DeviceControl for Detached {
    fn apply(&mut self, wanted: &LineSettings) -> LineSettings {
        *wanted
    }
    fn modem_lines(&mut self) -> Option<u8> {
        None
    }
    fn purge(&mut self, _which: u8) {}
}

/// Bytes to send each way after one step.
#[derive(Debug, Default)]
pub struct Output {
    pub to_device: Vec<u8>,
    pub to_client: Vec<u8>,
    /// What the client sent that was refused, for the caller to log.
    pub malformed: Vec<Malformed>,
}

/// One client session's RFC 2217 state.
#[derive(Debug)]
pub struct ComPortServer {
    decoder: Decoder,
    signature: Vec<u8>,
    /// Options we agreed to perform (we said WILL).
    we: [bool; 256],
    /// Options we agreed the client performs (we said DO).
    they: [bool; 256],
    wanted: LineSettings,
    effective: LineSettings,
    modem_mask: u8,
    line_mask: u8,
    /// The last modem state sent, `None` until the first NOTIFY-MODEMSTATE.
    last_modem: Option<u8>,
    suspended: bool,
    items: Vec<Item>,
}

impl ComPortServer {
    /// `settings`: what the device has now (or will get when it opens).
    pub fn new(settings: LineSettings, signature: &str) -> ComPortServer {
        ComPortServer {
            decoder: Decoder::default(),
            signature: signature.as_bytes().to_vec(),
            we: [false; 256],
            they: [false; 256],
            wanted: settings,
            effective: settings,
            modem_mask: 0xff,
            line_mask: 0,
            last_modem: None,
            suspended: false,
            items: Vec::new(),
        }
    }

    /// What the client asked for, to re-apply to a reopened device.
    pub fn wanted(&self) -> &LineSettings {
        &self.wanted
    }

    pub fn effective(&self) -> &LineSettings {
        &self.effective
    }

    /// The client asked (FLOWCONTROL-SUSPEND) that no data be sent to it.
    pub fn suspended(&self) -> bool {
        self.suspended
    }

    /// True once COM-PORT-OPTION is agreed in either direction.
    pub fn com_port_active(&self) -> bool {
        self.we[OPT_COM_PORT as usize] || self.they[OPT_COM_PORT as usize]
    }

    /// A (re)opened device: apply what the client wants and report any
    /// modem change.
    pub fn device_opened(&mut self, dev: &mut dyn DeviceControl, out: &mut Output) {
        self.effective = dev.apply(&self.wanted);
        self.poll_modem(dev, out);
    }

    /// Bytes from the client: data for the device, requests to answer.
    pub fn from_client(&mut self, bytes: &[u8], dev: &mut dyn DeviceControl, out: &mut Output) {
        let mut items = std::mem::take(&mut self.items);
        items.clear();
        self.decoder.decode(bytes, &mut items);
        for item in items.drain(..) {
            match item {
                Item::Data(d) => out.to_device.extend_from_slice(&d),
                Item::Negotiation { verb, option } => self.negotiate(verb, option, dev, out),
                Item::ComPort(ComPortMessage {
                    direction: Direction::ClientToServer,
                    command,
                }) => self.request(command, dev, out),
                // A server-direction command from a client, another
                // option's subnegotiation, NOP and friends: nothing to do.
                Item::ComPort(_) | Item::Subnegotiation { .. } | Item::Command(_) => {}
                Item::Malformed(m) => out.malformed.push(m),
            }
        }
        self.items = items;
    }

    /// Bytes from the device, escaped for the client.
    pub fn from_device(&self, data: &[u8], out: &mut Output) {
        encode_data(data, &mut out.to_client);
    }

    /// Sends NOTIFY-MODEMSTATE when a line under the mask changed (or the
    /// first one after negotiation).
    pub fn poll_modem(&mut self, dev: &mut dyn DeviceControl, out: &mut Output) {
        if !self.com_port_active() {
            return;
        }
        let now = self.modem_state(dev);
        let delta = match self.last_modem {
            None => 0,
            Some(last) => {
                let changed = last ^ now;
                if changed == 0 {
                    return;
                }
                let mut d = 0;
                if changed & modem::CTS != 0 {
                    d |= modem::DELTA_CTS;
                }
                if changed & modem::DSR != 0 {
                    d |= modem::DELTA_DSR;
                }
                if changed & modem::CD != 0 {
                    d |= modem::DELTA_CD;
                }
                if last & modem::RI != 0 && now & modem::RI == 0 {
                    d |= modem::TRAILING_EDGE_RI;
                }
                if (changed | d) & self.modem_mask == 0 {
                    self.last_modem = Some(now);
                    return;
                }
                d
            }
        };
        self.last_modem = Some(now);
        self.send(
            ComPortCommand::NotifyModemState(Some((now | delta) & self.modem_mask)),
            out,
        );
    }

    fn modem_state(&self, dev: &mut dyn DeviceControl) -> u8 {
        match dev.modem_lines() {
            Some(lines) => lines & 0xf0,
            None => {
                let mut s = 0;
                if self.effective.rts {
                    s |= modem::CTS;
                }
                if self.effective.dtr {
                    s |= modem::DSR | modem::CD;
                }
                s
            }
        }
    }

    fn send(&self, command: ComPortCommand, out: &mut Output) {
        encode_com_port(
            &ComPortMessage {
                direction: Direction::ServerToClient,
                command,
            },
            &mut out.to_client,
        );
    }

    fn negotiate(&mut self, verb: Verb, option: u8, dev: &mut dyn DeviceControl, out: &mut Output) {
        let supported = matches!(option, OPT_BINARY | OPT_SGA | OPT_COM_PORT);
        let i = option as usize;
        match verb {
            Verb::Will if supported => {
                if !self.they[i] {
                    self.they[i] = true;
                    encode_negotiation(Verb::Do, option, &mut out.to_client);
                }
            }
            Verb::Will => encode_negotiation(Verb::Dont, option, &mut out.to_client),
            Verb::Do if supported => {
                if !self.we[i] {
                    self.we[i] = true;
                    encode_negotiation(Verb::Will, option, &mut out.to_client);
                }
            }
            Verb::Do => encode_negotiation(Verb::Wont, option, &mut out.to_client),
            Verb::Wont => {
                if self.they[i] {
                    self.they[i] = false;
                    encode_negotiation(Verb::Dont, option, &mut out.to_client);
                }
            }
            Verb::Dont => {
                if self.we[i] {
                    self.we[i] = false;
                    encode_negotiation(Verb::Wont, option, &mut out.to_client);
                }
            }
        }
        if option == OPT_COM_PORT && self.last_modem.is_none() {
            // The first NOTIFY-MODEMSTATE: pyserial refuses to report modem
            // lines until it has one.
            self.poll_modem(dev, out);
        }
    }

    fn apply(&mut self, dev: &mut dyn DeviceControl, change: impl FnOnce(&mut LineSettings)) {
        change(&mut self.wanted);
        self.effective = dev.apply(&self.wanted);
    }

    fn request(&mut self, command: ComPortCommand, dev: &mut dyn DeviceControl, out: &mut Output) {
        use ComPortCommand as C;
        let answer = match command {
            C::Signature(s) if s.is_empty() => Some(C::Signature(self.signature.clone())),
            C::Signature(_) => None,
            C::SetBaudRate(0) => Some(C::SetBaudRate(self.effective.baud)),
            C::SetBaudRate(baud) => {
                self.apply(dev, |w| w.baud = baud);
                Some(C::SetBaudRate(self.effective.baud))
            }
            C::SetBaudRateLegacy(index) => {
                if let Some(baud) = legacy_baud_rate(index) {
                    self.apply(dev, |w| w.baud = baud);
                }
                // A rate without a legacy index is answered as 0, "unknown".
                Some(C::SetBaudRateLegacy(
                    legacy_baud_index(self.effective.baud).unwrap_or(0),
                ))
            }
            C::SetDataSize(bits) => {
                if (5..=8).contains(&bits) {
                    self.apply(dev, |w| w.data_bits = bits);
                }
                Some(C::SetDataSize(self.effective.data_bits))
            }
            C::SetParity(p) => {
                let parity = match p {
                    1 => Some(Parity::None),
                    2 => Some(Parity::Odd),
                    3 => Some(Parity::Even),
                    4 => Some(Parity::Mark),
                    5 => Some(Parity::Space),
                    _ => None,
                };
                if let Some(parity) = parity {
                    self.apply(dev, |w| w.parity = parity);
                }
                Some(C::SetParity(match self.effective.parity {
                    Parity::None => 1,
                    Parity::Odd => 2,
                    Parity::Even => 3,
                    Parity::Mark => 4,
                    Parity::Space => 5,
                }))
            }
            C::SetStopSize(s) => {
                let stop = match s {
                    1 => Some(StopBits::One),
                    2 => Some(StopBits::Two),
                    3 => Some(StopBits::OnePointFive),
                    _ => None,
                };
                if let Some(stop) = stop {
                    self.apply(dev, |w| w.stop_bits = stop);
                }
                Some(C::SetStopSize(match self.effective.stop_bits {
                    StopBits::One => 1,
                    StopBits::Two => 2,
                    StopBits::OnePointFive => 3,
                }))
            }
            C::SetControl(v) => {
                let lines_before = (self.effective.dtr, self.effective.rts);
                if let Some(answer) = self.control(v, dev) {
                    self.send(C::SetControl(answer), out);
                }
                if lines_before != (self.effective.dtr, self.effective.rts) {
                    // Answer first, then the modem change it caused on a
                    // virtual null-modem line.
                    self.poll_modem(dev, out);
                }
                None
            }
            C::NotifyLineState(_) => Some(C::NotifyLineState(Some(0))),
            C::NotifyModemState(_) => {
                let now = self.modem_state(dev);
                self.last_modem = Some(now);
                Some(C::NotifyModemState(Some(now & self.modem_mask)))
            }
            C::FlowControlSuspend => {
                self.suspended = true;
                None
            }
            C::FlowControlResume => {
                self.suspended = false;
                None
            }
            C::SetLineStateMask(m) => {
                self.line_mask = m;
                Some(C::SetLineStateMask(m))
            }
            C::SetModemStateMask(m) => {
                self.modem_mask = m;
                Some(C::SetModemStateMask(m))
            }
            C::PurgeData(which) => {
                if (1..=3).contains(&which) {
                    dev.purge(which);
                }
                Some(C::PurgeData(which))
            }
        };
        if let Some(answer) = answer {
            self.send(answer, out);
        }
    }

    /// SET-CONTROL: returns the value to answer.
    fn control(&mut self, v: u8, dev: &mut dyn DeviceControl) -> Option<u8> {
        let flow_answer = |s: &LineSettings, inbound: bool| match (s.flow, inbound) {
            (FlowControl::None, false) => control::FLOW_NONE,
            (FlowControl::XonXoff, false) => control::FLOW_XONXOFF,
            (FlowControl::Hardware, false) => control::FLOW_HARDWARE,
            (FlowControl::None, true) => control::INBOUND_FLOW_NONE,
            (FlowControl::XonXoff, true) => control::INBOUND_FLOW_XONXOFF,
            (FlowControl::Hardware, true) => control::INBOUND_FLOW_HARDWARE,
        };
        let answer = match v {
            control::FLOW_QUERY => flow_answer(&self.effective, false),
            control::FLOW_NONE | control::FLOW_XONXOFF | control::FLOW_HARDWARE => {
                let flow = match v {
                    control::FLOW_NONE => FlowControl::None,
                    control::FLOW_XONXOFF => FlowControl::XonXoff,
                    _ => FlowControl::Hardware,
                };
                self.apply(dev, |w| w.flow = flow);
                flow_answer(&self.effective, false)
            }
            control::INBOUND_FLOW_QUERY => flow_answer(&self.effective, true),
            // Outbound and inbound flow control are one setting on a
            // termios device: take the inbound request as the whole.
            control::INBOUND_FLOW_NONE
            | control::INBOUND_FLOW_XONXOFF
            | control::INBOUND_FLOW_HARDWARE => {
                let flow = match v {
                    control::INBOUND_FLOW_NONE => FlowControl::None,
                    control::INBOUND_FLOW_XONXOFF => FlowControl::XonXoff,
                    _ => FlowControl::Hardware,
                };
                self.apply(dev, |w| w.flow = flow);
                flow_answer(&self.effective, true)
            }
            control::BREAK_QUERY | control::BREAK_ON | control::BREAK_OFF => {
                if v != control::BREAK_QUERY {
                    self.apply(dev, |w| w.brk = v == control::BREAK_ON);
                }
                if self.effective.brk {
                    control::BREAK_ON
                } else {
                    control::BREAK_OFF
                }
            }
            control::DTR_QUERY | control::DTR_ON | control::DTR_OFF => {
                if v != control::DTR_QUERY {
                    self.apply(dev, |w| w.dtr = v == control::DTR_ON);
                }
                if self.effective.dtr {
                    control::DTR_ON
                } else {
                    control::DTR_OFF
                }
            }
            control::RTS_QUERY | control::RTS_ON | control::RTS_OFF => {
                if v != control::RTS_QUERY {
                    self.apply(dev, |w| w.rts = v == control::RTS_ON);
                }
                if self.effective.rts {
                    control::RTS_ON
                } else {
                    control::RTS_OFF
                }
            }
            // DCD/DTR/DSR flow control (17..=19) and unknown values: no
            // such thing here, and no answer that would not be a lie.
            _ => return None,
        };
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfc2217::{purge, IAC, SB, SE};

    /// A device that takes any setting but 1.5 stop bits and has no modem lines.
    #[derive(Default)]
    struct FakeDevice {
        purged: Vec<u8>,
    }

    impl DeviceControl for FakeDevice {
        fn apply(&mut self, wanted: &LineSettings) -> LineSettings {
            let mut s = *wanted;
            if s.stop_bits == StopBits::OnePointFive {
                s.stop_bits = StopBits::One;
            }
            s
        }
        fn modem_lines(&mut self) -> Option<u8> {
            None
        }
        fn purge(&mut self, which: u8) {
            self.purged.push(which);
        }
    }

    fn answers(out: &Output) -> Vec<Item> {
        let mut items = Vec::new();
        Decoder::default().decode(&out.to_client, &mut items);
        items
    }

    fn sb(code: u8, value: &[u8]) -> Vec<u8> {
        let mut v = vec![IAC, SB, OPT_COM_PORT, code];
        v.extend_from_slice(value);
        v.extend_from_slice(&[IAC, SE]);
        v
    }

    fn server_says(command: ComPortCommand) -> Item {
        Item::ComPort(ComPortMessage {
            direction: Direction::ServerToClient,
            command,
        })
    }

    #[test]
    fn pyserial_open_sequence() {
        let mut server = ComPortServer::new(LineSettings::default(), "tandem");
        let mut dev = FakeDevice::default();
        let mut out = Output::default();
        // DO ECHO, WILL SGA, DO SGA, DO COM-PORT, WILL COM-PORT.
        server.from_client(
            &[
                IAC, 253, 1, IAC, 251, 3, IAC, 253, 3, IAC, 253, 44, IAC, 251, 44,
            ],
            &mut dev,
            &mut out,
        );
        let n = |verb, option| Item::Negotiation { verb, option };
        let notify = server_says(ComPortCommand::NotifyModemState(Some(
            modem::CTS | modem::DSR | modem::CD,
        )));
        assert_eq!(
            answers(&out),
            vec![
                n(Verb::Wont, 1),
                n(Verb::Do, 3),
                n(Verb::Will, 3),
                n(Verb::Will, 44),
                notify,
                n(Verb::Do, 44),
            ]
        );
        // Repeating a request changes nothing, so it gets no answer.
        let mut out = Output::default();
        server.from_client(&[IAC, 251, 44], &mut dev, &mut out);
        assert!(out.to_client.is_empty());

        let mut out = Output::default();
        let mut req = sb(1, &115200u32.to_be_bytes());
        req.extend(sb(2, &[7]));
        req.extend(sb(3, &[3]));
        req.extend(sb(4, &[3])); // 1.5 stop bits: refused, 1 in effect
        req.extend(sb(5, &[control::FLOW_HARDWARE]));
        req.extend(sb(5, &[control::DTR_OFF]));
        req.extend(sb(12, &[purge::RECEIVE]));
        req.extend_from_slice(&[b'a', IAC, IAC, b'b']);
        server.from_client(&req, &mut dev, &mut out);
        assert_eq!(
            answers(&out),
            vec![
                server_says(ComPortCommand::SetBaudRate(115200)),
                server_says(ComPortCommand::SetDataSize(7)),
                server_says(ComPortCommand::SetParity(3)),
                server_says(ComPortCommand::SetStopSize(1)),
                server_says(ComPortCommand::SetControl(control::FLOW_HARDWARE)),
                server_says(ComPortCommand::SetControl(control::DTR_OFF)),
                // DSR and CD dropped with DTR on the virtual null modem.
                server_says(ComPortCommand::NotifyModemState(Some(
                    modem::CTS | modem::DELTA_DSR | modem::DELTA_CD
                ))),
                server_says(ComPortCommand::PurgeData(purge::RECEIVE)),
            ]
        );
        assert_eq!(out.to_device, b"a\xffb");
        assert_eq!(dev.purged, vec![purge::RECEIVE]);
        assert_eq!(server.effective().parity, Parity::Even);
        assert_eq!(server.effective().flow, FlowControl::Hardware);
    }

    #[test]
    fn legacy_baud_and_queries() {
        let mut server = ComPortServer::new(LineSettings::default(), "tandem");
        let mut dev = FakeDevice::default();
        let mut out = Output::default();
        let mut req = sb(1, &[14]);
        req.extend(sb(1, &[0, 0, 0, 0]));
        req.extend(sb(5, &[control::RTS_QUERY]));
        req.extend(sb(0, &[]));
        server.from_client(&req, &mut dev, &mut out);
        assert_eq!(
            answers(&out),
            vec![
                server_says(ComPortCommand::SetBaudRateLegacy(14)),
                server_says(ComPortCommand::SetBaudRate(115200)),
                server_says(ComPortCommand::SetControl(control::RTS_ON)),
                server_says(ComPortCommand::Signature(b"tandem".to_vec())),
            ]
        );
    }

    #[test]
    fn device_data_is_escaped() {
        let server = ComPortServer::new(LineSettings::default(), "tandem");
        let mut out = Output::default();
        server.from_device(&[1, IAC, 2], &mut out);
        assert_eq!(out.to_client, vec![1, IAC, IAC, 2]);
    }
}
