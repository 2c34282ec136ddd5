"""The run report: every metric of every model of one or more runs as report.md, report.html
and PNG plots (document.py), opening with the compact headline the terminal prints
(terminal.py, seeds.py), with the training curves and the headline per metric drawn
(plots.py) and a sweep's summary (sweep.py). Above `evaluation` and `sweep`: it reads what they
write and neither imports it."""
