-- wrk script for bench/reads.sh: the same read over and over, every response checked.
--
--   wrk ... URL -- cairn <records> [token]
--   wrk ... URL -- etcd  <records> <range-request-body>
--
-- cairn: GET <URL's path> (GET /v1/services/web); a good response is 200 whose JSON has
--        <records> instances (counted as occurrences of "address"). With a token (ACL mode), it
--        goes in X-Cairn-Token.
-- etcd:  POST <URL's path> (/v3/kv/range on the JSON gateway) with the given body; a good
--        response is 200 with "count":"<records>" (the gateway writes int64 as a string).
--
-- The request is static (no request() function), so wrk builds it once per thread: the load
-- tool costs as little as it can, and the same for both systems. done() prints one line,
-- "BENCH_RESULT {json}", which reads_tool.py record-wrk parses.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  want = tonumber(args[2])
  if (mode ~= "cairn" and mode ~= "etcd") or not want then
    error("usage: wrk ... -- <cairn|etcd> <records> [token | etcd range body]")
  end
  if mode == "etcd" then
    if not args[3] or args[3] == "" then
      error("etcd mode needs the range request body as the third script argument")
    end
    wrk.method = "POST"
    wrk.body = args[3]
    wrk.headers["Content-Type"] = "application/json"
  else
    wrk.method = "GET"
    if args[3] and args[3] ~= "" then
      wrk.headers["X-Cairn-Token"] = args[3]
    end
  end
  non2xx = 0
  bad_body = 0
  statuses = {}
  sample_error = nil
end

function response(status, _headers, body)
  if status ~= 200 then
    non2xx = non2xx + 1
    statuses[status] = (statuses[status] or 0) + 1
    if not sample_error then
      sample_error = status .. " " .. string.sub(body or "", 1, 200)
    end
    return
  end
  local n
  if mode == "cairn" then
    local _, c = string.gsub(body or "", '"address"', "")
    n = c
  else
    n = tonumber(string.match(body or "", '"count":"?(%d+)"?'))
  end
  if n ~= want then
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
  local total_non2xx, total_bad_body = 0, 0
  local statuses_all = {}
  local sample = nil
  for _, t in ipairs(threads) do
    total_non2xx = total_non2xx + (t:get("non2xx") or 0)
    total_bad_body = total_bad_body + (t:get("bad_body") or 0)
    for code, n in pairs(t:get("statuses") or {}) do
      statuses_all[code] = (statuses_all[code] or 0) + n
    end
    sample = sample or t:get("sample_error")
  end
  local parts = {}
  for code, n in pairs(statuses_all) do
    parts[#parts + 1] = string.format('"%d":%d', code, n)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"bad_body":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
      .. '"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,"lat_mean_us":%.1f,'
      .. '"statuses":{%s},"sample_error":%s}\n',
    summary.requests, summary.duration, summary.bytes, total_non2xx, total_bad_body,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    table.concat(parts, ","), sample and json_string(sample) or "null"))
end
