-- SPDX-License-Identifier: AGPL-3.0-or-later
-- kontur: rights by role on top of Orthanc's HTTP basic authentication (R6).
--
-- The table comes from the "KonturRoles" section kontur renders into
-- /etc/orthanc/orthanc.json: login -> {view, download, upload, delete, admin}.
-- A login missing from the table is refused; so is anything not listed here.

local roles = GetOrthancConfiguration()["KonturRoles"] or {}

local function starts(s, prefix)
  return string.sub(s, 1, string.len(prefix)) == prefix
end

local function is_download(uri)
  return string.find(uri, "/archive$") or string.find(uri, "/media$")
      or string.find(uri, "/file$") or string.find(uri, "/data$")
      or starts(uri, "/tools/create-archive") or starts(uri, "/tools/create-media")
end

local function is_query(uri)
  return uri == "/tools/find" or uri == "/tools/lookup"
end

-- a node replicating to this one ("peer"): upload, list the instances of a study to
-- verify it, probe the link, and kontur's receiver routes (digests, MD5s, corrections
-- of what it sent itself); nothing else -- no downloads, no searches, no other
-- hospital's studies
local PEER_POST = {["/instances"] = true, ["/kontur/digests"] = true, ["/kontur/md5"] = true,
                   ["/kontur/retire"] = true, ["/kontur/replace"] = true, ["/kontur/patients"] = true}

local function peer_allowed(method, uri)
  if method == "POST" then
    return PEER_POST[uri] == true
  end
  if method == "GET" then
    return uri == "/system" or string.match(uri, "^/studies/[0-9a-f%-]+/series$") ~= nil
  end
  return false
end

function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  local r = roles[username]
  if r == nil then
    return false
  end
  if r["admin"] then
    return true
  end
  if r["peer"] then
    return peer_allowed(method, uri)
  end
  if r["hospital"] then
    -- a hospital's user on the TsAMI (issue 12): the viewer link only, which opens their
    -- hospital's studies and those shared with it (the plugin checks which); no other route
    return method == "GET" and starts(uri, "/kontur/view/") and r["view"] == true
  end
  if method == "GET" and (starts(uri, "/kontur/view/") or starts(uri, "/kontur/study/")) then
    -- the page the MIS's link opens and a study's status (issue 12): whoever may view
    return r["view"] == true
  end
  if starts(uri, "/kontur/") or uri == "/kontur" then
    -- kontur's replication status, parked list and controls: operators' business
    -- (admins, above); doctors and peers have no use for them
    return false
  end
  if method == "GET" then
    if is_download(uri) then
      return r["download"] == true
    end
    return r["view"] == true
  end
  if method == "POST" then
    if is_query(uri) then
      return r["view"] == true
    end
    if is_download(uri) then
      return r["download"] == true
    end
    if uri == "/instances" or starts(uri, "/dicom-web/studies") then
      return r["upload"] == true
    end
    return false
  end
  if method == "DELETE" then
    return r["delete"] == true
  end
  return false
end
