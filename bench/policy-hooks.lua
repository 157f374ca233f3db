-- Benchmark policy: scenario 3, as policy-durable.lua plus a trivial
-- handler on every smtp_server_* event a message passes through, so each
-- message costs a policy round trip per event.
local kumo = require 'kumo'
local dir = assert(os.getenv('BENCH_DIR'), 'BENCH_DIR not set')
local port = assert(os.getenv('BENCH_PORT'), 'BENCH_PORT not set')

kumo.on('init', function()
  kumo.define_spool { name = 'data', path = dir .. '/spool/data' }
  kumo.define_spool { name = 'meta', path = dir .. '/spool/meta' }
  kumo.configure_local_logs { log_dir = dir .. '/log' }
  -- Reception only: the queue manager's resolver is a closed loopback port,
  -- so every message stays spooled (one TransientFailure record each)
  -- instead of being delivered or bounced during the measurement.
  kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' } }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:' .. port,
    hostname = 'bench.localhost',
  }
end)

kumo.on('smtp_server_connection_accepted', function(conn_meta)
  conn_meta:set_meta('bench_accepted', true)
end)

kumo.on('smtp_server_ehlo', function(domain, conn_meta, extensions)
  conn_meta:set_meta('bench_ehlo', domain)
end)

kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  conn_meta:set_meta('bench_sender', sender.email)
end)

kumo.on('smtp_server_rcpt_to', function(recipient, conn_meta)
  conn_meta:set_meta('bench_rcpt', recipient.email)
end)

kumo.on('smtp_server_data', function(msg, conn_meta)
  msg:set_meta('bench_data', true)
end)

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_meta('bench_received', true)
end)
