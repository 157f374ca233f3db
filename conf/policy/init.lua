-- The default policy: what `make run` starts.
--
-- It is a KumoMTA listener policy and runs unchanged on KumoMTA.  Paths are
-- relative to the directory kumod is started from (the source tree for
-- `make run`); an installed relay uses /var/spool/kumomta and
-- /var/log/kumomta instead.  See kumo-policy(5) for every parameter.
local kumo = require 'kumo'

kumo.on('init', function()
  -- Two spools are required: 'data' holds message bodies, 'meta' the
  -- envelope and metadata.  A message is answered 250 only once both
  -- files are on stable storage.
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }

  -- One JSON record per line per event (Reception, Rejection, ...).
  kumo.configure_local_logs { log_dir = './var/log' }

  kumo.start_esmtp_listener {
    listen = '127.0.0.1:2525',
    -- hostname defaults to this machine's name; banner to 'KumoMTA'.
    -- Only these peers may relay to any domain (the default).
    relay_hosts = { '127.0.0.1', '::1' },
  }
end)
