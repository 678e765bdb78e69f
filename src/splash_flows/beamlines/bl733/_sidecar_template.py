"""The layout of a real 7.3.3 sidecar (values anonymised): the key list, counters and number formats the
simulator reproduces. A copy of ``shared/reference/bl733/sample_scan_2m.txt``, kept in the package so the
simulator needs no file outside it.
"""

SIDECAR_TEMPLATE = """\
401.000
10440.000
235561.000
Izero: 401.000
I1 normalization: 235561.000
Diode normalization: 10440.000
Normalize by: Diode
Exposure time s: 10.000
ALS Proposal #: 00622
ALS ESAF #: 00622-001
PI: PILastname
Calibration image path: /spot733-data/raw/userdata
Motors: 64
Sample X Stage: -88.245200
Sample Y Stage: 3.128650
Sample X Stage Large: 5.000500
Sample Y Stage Large: 34.997600
Sample Alpha Stage: 0.130909
Sample Phi Stage: 0.051610
M201 Feedback: 0.010372
M1 Pitch: 0.202033
M1 Bend: 48.399999
BS X: -1.357906
BS Y: 9.981358
Sample Y Stage Fine XPS: 0.000000
Sample Y Stage Labjack: 0.000000
Sample Rotation Stage: 0.000000
Slit1 top: 9.263500
Slit1 bottom: 11.732500
Slit1 right: 11.109500
Slit1 left: 11.356000
Exit Slit top: 7.781500
Exit Slit bottom: 10.976500
Exit Slit left: 6.961500
Exit Slit right: 8.903000
Sample Y Stage Robot: 0.000000
Detector Horizontal: 0.000000
Detector Vertical: 0.000000
GIWAXS beamstop X: 0.000000
GIWAXS beamstop Y: 0.000000
Beamstop X: 0.000000
Beamstop Y: 0.000000
Detector Left Motor: 0.000000
Detector Right Motor: 0.000000
Motorized Lab Jack: 0.000000
M1 Alignment Tune: 0.202033
print head height: 0.000000
Rotation New: 0.000000
printer roll: 0.000000
EZ fast tension stage: 0.000000
Motorized Lab Jack1: 0.000000
Sample Rotation Stage ESP: 0.000000
Printing motor: 0.000000
GIWAXS beamstop Y thorlabs: 0.000000
Sample Y Stage Arthur: 0.000000
Flight Tube Horizontal: 0.000000
Flight Tube Vertical: 0.000000
Hacked Ager Stage: 0.000000
Sample Rotation Stage Miller: 0.000000
Mono Angle: 0.000000
Xtal2 Pico 1 Feedback: 0.000000
Xtal2 Pico 2 Feedback: 0.000000
Xtal2 Pico 3 Feedback: 0.000000
Xtal2 Pico 1: 0.000000
Xtal2 Pico 2: 0.000000
Xtal2 Pico 3: 0.000000
Sample Y Stage_old: 0.000000
AO Waveform: 0.000000
AO0Traingle: 0.000000
AO1SquareWave: 0.000000
Lamda Zup heater: 0.000000
thermofeedback: 0.000000
spinCoaterMotor: 0.000000
BK Power Supply: 0.000000
BK Control: 0.000000
EPOS: 0.000000
EPOS2: 0.000000
DIOs: 14
SAXS Protector: 0.000000
Beamline Shutter Closed: 0.000000
Beam Current Over Threshold: 1.000000
Slit 1 in Position: 1.000000
Slit 2 in Position: 1.000000
Temp Beamline Shutter Open: 0.000000
Beamline Shutter Open: 1.000000
Feedback Interlock: 1.000000
Beamline Pass Beam: 1.000000
VacuumBadAtIG304: 0.000000
Gate Shutter: 0.000000
Bruker pulses: 0.000000
Slit Top Good: 1.000000
Slit Bottom Good: 1.000000
AIs: 38
Izero: 401.000000
GiSAXS Beamstop: 0.521687
slit1 top current: NaN
slit1 bottom current: NaN
Beam Current: 499.509338
Beamline Shutter AI: 1.000000
Beamline Pass Beam AI: 1.000000
Vertical Beam Position: NaN
IG304Epics: 11.052951
Izero AI: 0.000000
I1 AI: -0.235249
PHI Alignment Beamstop: 0.235471
AI Channel 6: -0.238456
AI Channel 7: 0.003273
thermocoupleAI3: -2.696180
Pyro: NaN
Raytec - Room Temp: 0.000000
BK Amps: NaN
BK Volts: NaN
BK Power: NaN
BK Resistance: NaN
Pilatus 300KW trigger pulse: 0.000000
Pilatus 1M Trigger Pulse: 0.000000
PCO Invert: 0.000000
Gate: 0.000000
I1: 235561.000000
GiSAXS Beamstop Counter: 522894.000000
Sum of Slit Current: 10.633427
Pilatus 100K exp out: 0.000000
Kramer strain data: 0.000000
Xtal2 Pico 1: NaN
Xtal2 Pico 2: NaN
Xtal2 Pico 3: NaN
M1 Pitch: 0.202057
ABS(Vertical Beam Position): NaN
AIat6221 Channel 6: NaN
DCVoltageMonitor: 0.000000
TC: 0.000000
!0
"""
