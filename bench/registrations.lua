-- wrk script for bench/registrations.sh: one registration with a never-used id per request.
--
--   wrk ... URL -- <cairn|etcd> <id-prefix> <json-document> <etcd-key-prefix> [cairn token]
--
-- cairn: PUT /v1/services/bench/instances/<id>, body = the JSON document.
-- etcd:  POST /v3/kv/put (JSON gRPC gateway), {"key":b64(<etcd-key-prefix><id>),"value":b64(document)}.
--        The stored value is byte-for-byte the document Cairn receives, so both systems persist
--        the same payload.
-- A non-empty cairn token (the ACL phases) goes in X-Cairn-Token on every Cairn request.
--
-- <id> = <id-prefix>-<thread number>-<per-thread counter>. The shell script makes <id-prefix>
-- different for every run (and warm-up), so no key is ever written twice within one invocation:
-- an overwrite can be cheaper than an insert, and we want to measure inserts.
-- Ids only use [A-Za-z0-9_.-] and stay far below Cairn's 128-character limit.
--
-- Every response that is not 2xx, or is 2xx without the expected body, is counted. done()
-- prints one machine-readable line, "BENCH_RESULT {json}", which the summariser parses; we do
-- not scrape wrk's human-readable output.

---------------------------------------------------------------------------------------------
-- Base64 (RFC 4648, with padding). wrk embeds LuaJIT (Lua 5.1) which has no base64, so plain
-- arithmetic it is: no dependence on the `bit` module.
---------------------------------------------------------------------------------------------
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_CHAR = {}
for i = 1, 64 do
  B64_CHAR[i - 1] = B64:sub(i, i)
end

function base64(s)
  local out = {}
  local n = #s
  for i = 1, n, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    out[#out + 1] = B64_CHAR[math.floor(v / 262144) % 64]
      .. B64_CHAR[math.floor(v / 4096) % 64]
      .. (b and B64_CHAR[math.floor(v / 64) % 64] or "=")
      .. (c and B64_CHAR[v % 64] or "=")
  end
  return table.concat(out)
end

-- Self-test against RFC 4648 section 10 vectors; runs in every Lua state wrk creates, so a
-- broken encoder stops wrk before it sends a single request.
local vectors = {
  [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
  fooba = "Zm9vYmE=", foobar = "Zm9vYmFy",
}
for plain, encoded in pairs(vectors) do
  if base64(plain) ~= encoded then
    error(string.format("base64 self-test failed: %q -> %q, want %q", plain, base64(plain), encoded))
  end
end

---------------------------------------------------------------------------------------------
-- setup / done run in wrk's main Lua state; init / request / response in each thread's state.
---------------------------------------------------------------------------------------------
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

function init(args)
  mode = args[1]
  id_prefix = args[2]
  doc = args[3]
  etcd_key_prefix = args[4] or ""
  if mode ~= "cairn" and mode ~= "etcd" then
    error("first script argument must be 'cairn' or 'etcd', got " .. tostring(mode))
  end
  if not id_prefix or id_prefix == "" or not doc or doc == "" then
    error("usage: wrk ... -- <cairn|etcd> <id-prefix> <json-document> [etcd-key-prefix]")
  end
  if mode == "cairn" then
    headers = { ["Content-Type"] = "application/json" }
    if args[5] and args[5] ~= "" then
      headers["X-Cairn-Token"] = args[5]
    end
    -- Cairn answers {"index":N}; anything else on a 2xx is a contract violation.
    expect = '"index"%s*:%s*%d'
  else
    headers = { ["Content-Type"] = "application/json" }
    doc_b64 = base64(doc) -- the value is the same for every request: encode once
    -- etcd's gateway answers {"header":{...}} for a successful put.
    expect = '"header"'
  end
  counter = 0
  non2xx = 0       -- responses whose status is outside 200..299
  bad_body = 0     -- 2xx responses without the expected body
  statuses = {}    -- status code -> count, for the non-2xx ones only
  sample_error = nil
end

function request()
  counter = counter + 1
  local id = id_prefix .. "-" .. thread_no .. "-" .. counter
  if mode == "cairn" then
    return wrk.format("PUT", "/v1/services/bench/instances/" .. id, headers, doc)
  end
  local body = '{"key":"' .. base64(etcd_key_prefix .. id) .. '","value":"' .. doc_b64 .. '"}'
  return wrk.format("POST", "/v3/kv/put", headers, body)
end

function response(status, _headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    statuses[status] = (statuses[status] or 0) + 1
    if not sample_error then
      sample_error = status .. " " .. string.sub(body or "", 1, 200)
    end
  elseif not string.find(body or "", expect) then
    bad_body = bad_body + 1
    if not sample_error then
      sample_error = status .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, _requests)
  local total_non2xx, total_bad_body, generated = 0, 0, 0
  local statuses_all = {}
  local sample = nil
  for _, t in ipairs(threads) do
    total_non2xx = total_non2xx + (t:get("non2xx") or 0)
    total_bad_body = total_bad_body + (t:get("bad_body") or 0)
    generated = generated + (t:get("counter") or 0)
    for code, n in pairs(t:get("statuses") or {}) do
      statuses_all[code] = (statuses_all[code] or 0) + n
    end
    sample = sample or t:get("sample_error")
  end
  local status_parts = {}
  for code, n in pairs(statuses_all) do
    status_parts[#status_parts + 1] = string.format('"%d":%d', code, n)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"generated":%d,"duration_us":%d,"non2xx":%d,"bad_body":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
      .. '"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,"lat_mean_us":%.1f,'
      .. '"statuses":{%s},"sample_error":%s}\n',
    summary.requests, generated, summary.duration, total_non2xx, total_bad_body,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    table.concat(status_parts, ","), sample and json_string(sample) or "null"))
end
