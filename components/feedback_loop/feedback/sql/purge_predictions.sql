DELETE FROM {predictions} WHERE created_at < %(cutoff)s
