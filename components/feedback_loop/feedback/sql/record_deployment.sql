INSERT INTO deployments (model_name, version, action, traffic_percent, reason, details)
VALUES (%(model_name)s, %(version)s, %(action)s, %(traffic_percent)s, %(reason)s, %(details)s)
