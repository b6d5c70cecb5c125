"""The event contract: Avro schemas by version, the wire codec and the validation rules."""
