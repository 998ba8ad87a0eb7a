"""The run record: trial states, file names and fields, the trial directory, locks, provenance.

Every part that reads or writes a trial (trainer, launcher, backends, mirror, tables) goes through
this layer; `bilma.runs.schema` is its vocabulary."""
