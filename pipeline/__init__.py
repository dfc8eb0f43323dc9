"""The labelling job: a Beam pipeline that runs the teacher with vLLM and writes soft-label shards."""
