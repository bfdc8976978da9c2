"""pyserial's rfc2217 client against tandem's serve mode.

Usage: pyserial_client.py PORT. Every step raises if the server answers
with something other than what was asked; results go to stdout as JSON.
"""
import json
import sys
import time

import serial

port = sys.argv[1]
res = {}
t0 = time.monotonic()
s = serial.serial_for_url("rfc2217://127.0.0.1:%s" % port, timeout=3)
res["open_ms"] = (time.monotonic() - t0) * 1000.0



def attempt(name, value):
    """Sets one setting; pyserial waits for the answer and raises
    ValueError when the value in effect differs from the one asked."""
    before = getattr(s, name)
    try:
        setattr(s, name, value)
        return "accepted"
    except ValueError:
        # pyserial keeps the refused value and would resend it with every
        # later setting: put back the one in effect.
        setattr(s, name, before)
        return "refused"


# Every line setting. A Linux pty keeps CS8 and no parity whatever is
# asked, so those two must come back refused: the server answers with the
# value in effect, not an echo of the request.
res["settings"] = {
    "baudrate": attempt("baudrate", 115200),
    "bytesize": attempt("bytesize", serial.SEVENBITS),
    "parity": attempt("parity", serial.PARITY_EVEN),
    "stopbits": attempt("stopbits", serial.STOPBITS_TWO),
    "rtscts": attempt("rtscts", True),
    "rtscts_off": attempt("rtscts", False),
    "xonxoff": attempt("xonxoff", True),
}

# Modem lines on the virtual null modem: CTS follows RTS, DSR/CD follow DTR.
res["modem_initial"] = [s.cts, s.dsr, s.ri, s.cd]
s.dtr = False
time.sleep(0.1)  # the NOTIFY-MODEMSTATE that follows the answer
res["modem_dtr_off"] = [s.cts, s.dsr, s.ri, s.cd]
s.rts = False
time.sleep(0.1)
res["modem_rts_off"] = [s.cts, s.dsr, s.ri, s.cd]
s.dtr = True
s.rts = True
s.xonxoff = False
s.stopbits = serial.STOPBITS_ONE

s.reset_input_buffer()
s.reset_output_buffer()

# Data both ways through the echo device, every byte value including IAC.
payload = bytes(range(256)) * 4
s.write(payload)
got = s.read(len(payload))
res["echo_ok"] = got == payload
res["echo_len"] = len(got)
s.close()
print(json.dumps(res))
