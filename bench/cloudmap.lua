-- wrk script for bench/cloudmap.sh: one read over and over, every response checked.
--
--   wrk ... URL -- native   <instances>
--   wrk ... URL -- cloudmap <instances> <request file>
--
-- native:   GET <URL's path> (/v1/services/web?health=passing); good: 200 with <instances>
--           instances (occurrences of "address").
-- cloudmap: POST / with the body and headers of <request file> (written by cloudmap_tool.py
--           sign: the body on the first line, then one "Name: value" header a line, a SigV4
--           signature among them); good: 200 with <instances> instances (occurrences of
--           "InstanceId"). The server checks the signature of every request: the request is
--           signed once, so the load tool spends nothing on signing, and the server all it
--           spends on a real SDK's request.
--
-- The request is static (no request() function): wrk builds it once per thread. done() prints
-- "BENCH_RESULT {json}" for cloudmap_tool.py record.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  want = tonumber(args[2])
  if (mode ~= "native" and mode ~= "cloudmap") or not want then
    error("usage: wrk ... -- <native|cloudmap> <instances> [request file]")
  end
  if mode == "cloudmap" then
    local f = assert(io.open(args[3] or "", "r"), "cloudmap mode needs the request file")
    wrk.method = "POST"
    wrk.body = f:read("*l")
    for line in f:lines() do
      local name, value = string.match(line, "^([^:]+): (.*)$")
      if name then
        wrk.headers[name] = value
      end
    end
    f:close()
    marker = '"InstanceId"'
  else
    wrk.method = "GET"
    marker = '"address"'
  end
  non2xx = 0
  bad_body = 0
  sample_error = nil
end

function response(status, _headers, body)
  if status ~= 200 then
    non2xx = non2xx + 1
    sample_error = sample_error or (status .. " " .. string.sub(body or "", 1, 200))
    return
  end
  local _, n = string.gsub(body or "", marker, "")
  if n ~= want then
    bad_body = bad_body + 1
    sample_error = sample_error or (status .. " " .. string.sub(body or "", 1, 200))
  end
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, _requests)
  local non2xx_all, bad_all, sample = 0, 0, nil
  for _, t in ipairs(threads) do
    non2xx_all = non2xx_all + (t:get("non2xx") or 0)
    bad_all = bad_all + (t:get("bad_body") or 0)
    sample = sample or t:get("sample_error")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"non2xx":%d,"bad_body":%d,"errors":%d,'
      .. '"lat_p50_us":%d,"lat_p99_us":%d,"sample_error":%s}\n',
    summary.requests, summary.duration, non2xx_all, bad_all,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), sample and json_string(sample) or "null"))
end
