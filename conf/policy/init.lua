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

-- Delivery.  Without these two handlers every message goes to the MX hosts
-- of its recipient's domain, retried every 20 minutes (doubling) for up to
-- 7 days, with opportunistic, verified STARTTLS.  To send everything to a
-- smarthost instead, uncomment and adapt:
--
-- kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
--   return kumo.make_queue_config {
--     protocol = { smtp = { mx_list = { 'smarthost.example.net' } } },
--     retry_interval = '1 minute',
--     max_age = '1 day',
--   }
-- end)
--
-- kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
--   return kumo.make_egress_path {
--     enable_tls = 'Required',
--     connection_limit = 8,
--     -- a smarthost on this machine (127.0.0.1) needs: prohibited_hosts = {},
--   }
-- end)
