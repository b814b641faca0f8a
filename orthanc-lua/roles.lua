-- SPDX-License-Identifier: AGPL-3.0-or-later
-- kontur: rights by role on top of Orthanc's HTTP basic authentication (R6).
--
-- The table comes from the "KonturRoles" section kontur renders into
-- /etc/orthanc/orthanc.json: login -> {view, download, upload, delete, admin}.
-- A login missing from the table is refused; so is anything not listed here.
--
-- Rights are decided per route from ROUTES below (Orthanc 1.10.1, its DICOMweb
-- plugin 1.7 and Web Viewer 2.8 as in Debian 12), deny by default: a route
-- missing from the table is for admins only.  "view" is what looking at a study
-- takes -- lists, tags, metadata, pictures rendered for the screen, Orthanc
-- Explorer, the Web Viewer; "download" is anything that hands out the DICOM
-- file or its stored data -- the file, its attachments, archives and media,
-- raw tag values and pixel data, decoded pixel values (image-*, numpy, matlab),
-- DICOMweb WADO-RS (objects, frames, bulk data) and WADO-URI.
--
-- What Debian's Orthanc 1.10.1 passes as `uri` (probed; the variants are in
-- tests/orthanc/test_roles_filter.py): the path only, percent-decoded (%2F too)
-- and without dot segments; a trailing slash remains; the query string is NOT
-- part of it, so "/wado" is a download whatever its contentType (the filter
-- cannot see it).

local roles = GetOrthancConfiguration()["KonturRoles"] or {}

-- the components of a path as Orthanc's router sees them (Toolbox::SplitUriComponents):
-- empty ones, from a trailing or doubled slash, are dropped
local function components(uri)
  local out = {}
  for c in string.gmatch(uri, "[^/]+") do
    out[#out + 1] = c
  end
  return out
end

local LEVEL = "patients|studies|series|instances"
local PARENT = "patients|studies|series"

-- method, path pattern, right needed.  A pattern's components are literals,
-- "a|b" (one of them), "*" (any one component) or, last only, "**" (one or more).
local ROUTES = {
  -- Orthanc Explorer, its plugins' extensions, and the server's name and version
  {"GET", "/", "view"},                                      -- redirects to the Explorer
  {"GET", "/app/**", "view"},
  {"GET", "/system", "view"},
  {"GET", "/plugins", "view"},
  {"GET", "/plugins/*", "view"},                             -- a plugin's entry, explorer.js
  -- the resources: lists, their main tags, parents and children
  {"GET", "/" .. LEVEL, "view"},
  {"GET", "/" .. LEVEL .. "/*", "view"},
  {"GET", "/" .. LEVEL .. "/*/patient|study|series|studies|instances", "view"},
  {"GET", "/" .. LEVEL .. "/*/statistics|module", "view"},
  {"GET", "/" .. PARENT .. "/*/shared-tags", "view"},
  {"GET", "/studies/*/module-patient", "view"},
  {"GET", "/series/*/ordered-slices", "view"},
  {"GET", "/patients/*/protected", "view"},
  {"GET", "/instances/*/tags|simplified-tags|header", "view"},
  {"GET", "/" .. LEVEL .. "/*/metadata", "view"},
  {"GET", "/" .. LEVEL .. "/*/metadata/*", "view"},
  -- attachments: their list, size and checksums are metadata; their content is the file
  {"GET", "/" .. LEVEL .. "/*/attachments", "view"},
  {"GET", "/" .. LEVEL .. "/*/attachments/*", "view"},
  {"GET", "/" .. LEVEL .. "/*/attachments/*/size|md5|compressed-size|compressed-md5|is-compressed", "view"},
  {"GET", "/" .. LEVEL .. "/*/attachments/*/data|compressed-data", "download"},
  -- pictures for the screen (8-bit, windowed PNG/JPEG) and an encapsulated PDF as Explorer
  -- shows it: viewing
  {"GET", "/instances/*/preview|rendered|pdf", "view"},
  {"GET", "/instances/*/frames", "view"},                    -- how many frames
  {"GET", "/instances/*/frames/*", "view"},                  -- what a frame offers
  {"GET", "/instances/*/frames/*/preview|rendered", "view"},
  -- the stored data: the file, raw tag values (the pixel data among them), raw frames,
  -- decoded pixel values
  {"GET", "/instances/*/file", "download"},
  {"GET", "/instances/*/content", "download"},
  {"GET", "/instances/*/content/**", "download"},
  {"GET", "/instances/*/frames/*/raw|raw.gz|image-uint8|image-uint16|image-int16|numpy|matlab", "download"},
  {"GET", "/instances/*/image-uint8|image-uint16|image-int16|numpy|matlab", "download"},
  {"GET", "/series/*/numpy", "download"},
  {"GET", "/" .. PARENT .. "/*/archive|media", "download"},
  {"POST", "/" .. PARENT .. "/*/archive|media", "download"},
  {"POST", "/tools/create-archive|create-media|create-media-extended", "download"},
  -- an asynchronous archive: its job and its output
  {"GET", "/jobs/*", "download"},
  {"GET", "/jobs/*/archive|media", "download"},
  -- searches
  {"POST", "/tools/find|lookup", "view"},
  -- DICOMweb: QIDO-RS searches, metadata and rendered pictures are viewing ...
  {"GET", "/dicom-web/studies|series|instances", "view"},
  {"GET", "/dicom-web/studies/*/series|instances", "view"},
  {"GET", "/dicom-web/studies/*/series/*/instances", "view"},
  {"GET", "/dicom-web/studies/*/metadata|rendered", "view"},
  {"GET", "/dicom-web/studies/*/series/*/metadata|rendered", "view"},
  {"GET", "/dicom-web/studies/*/series/*/instances/*/metadata|rendered", "view"},
  {"GET", "/dicom-web/studies/*/series/*/instances/*/frames/*/rendered", "view"},
  -- ... WADO-RS is the DICOM objects, their frames (raw pixel data) and bulk data
  {"GET", "/dicom-web/studies/*", "download"},
  {"GET", "/dicom-web/studies/*/series/*", "download"},
  {"GET", "/dicom-web/studies/*/series/*/instances/*", "download"},
  {"GET", "/dicom-web/studies/*/series/*/instances/*/frames", "download"},
  {"GET", "/dicom-web/studies/*/series/*/instances/*/frames/*", "download"},
  {"GET", "/dicom-web/studies/*/series/*/instances/*/bulk/**", "download"},
  -- WADO-URI: the query (contentType) is not passed to the filter, so all of it
  {"GET", "/wado", "download"},
  -- the Web Viewer the viewer link's page opens (its images are for the screen)
  {"GET", "/web-viewer/app/**", "view"},
  {"GET", "/web-viewer/libs/**", "view"},
  {"GET", "/web-viewer/series/*", "view"},
  {"GET", "/web-viewer/is-stable-series/*", "view"},
  {"GET", "/web-viewer/instances/*", "view"},
  -- kontur's viewer link and a study's status (issue 12); the plugin checks which study
  {"GET", "/kontur/view/**", "view"},
  {"GET", "/kontur/study/*", "view"},
  -- storing: Orthanc's REST and DICOMweb STOW-RS
  {"POST", "/instances", "upload"},
  {"POST", "/dicom-web/studies", "upload"},
  {"POST", "/dicom-web/studies/*", "upload"},
  -- deleting a patient, study, series or instance
  {"DELETE", "/" .. LEVEL .. "/*", "delete"},
}

local function compile(pattern)
  local out = {}
  for _, c in ipairs(components(pattern)) do
    if c == "*" or c == "**" then
      out[#out + 1] = c
    else
      local set = {}
      for alt in string.gmatch(c, "[^|]+") do
        set[alt] = true
      end
      out[#out + 1] = set
    end
  end
  return out
end

for _, route in ipairs(ROUTES) do
  route.components = compile(route[2])
end

local function matches(pattern, comps)
  for i, p in ipairs(pattern) do
    if p == "**" then
      return #comps >= i
    end
    local c = comps[i]
    if c == nil or (p ~= "*" and not p[c]) then
      return false
    end
  end
  return #comps == #pattern
end

-- the right a request needs, or nil: a route not in the table (admins only)
local function right_for(method, comps)
  for _, route in ipairs(ROUTES) do
    if route[1] == method and matches(route.components, comps) then
      return route[3]
    end
  end
  return nil
end

-- a node replicating to this one ("peer"): upload, list the instances of a study to
-- verify it, probe the link, and kontur's receiver routes (digests, MD5s, corrections
-- of what it sent itself); nothing else -- no downloads, no searches, no other
-- hospital's studies
local PEER_POST = {["/instances"] = true, ["/kontur/digests"] = true, ["/kontur/md5"] = true,
                   ["/kontur/retire"] = true, ["/kontur/replace"] = true, ["/kontur/patients"] = true}

local function peer_allowed(method, path)
  if method == "POST" then
    return PEER_POST[path] == true
  end
  if method == "GET" then
    return path == "/system" or string.match(path, "^/studies/[0-9a-f%-]+/series$") ~= nil
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
  local comps = components(uri)
  local path = "/" .. table.concat(comps, "/")
  if r["peer"] then
    return peer_allowed(method, path)
  end
  if r["hospital"] then
    -- a hospital's user on the TsAMI (issue 12): the viewer link only, which opens their
    -- hospital's studies and those shared with it (the plugin checks which); no other route
    return method == "GET" and comps[1] == "kontur" and comps[2] == "view" and #comps > 2 and r["view"] == true
  end
  -- anything else of kontur's (replication status, parked list, controls, shares) is
  -- operators' business: not in the table
  local right = right_for(method, comps)
  return right ~= nil and r[right] == true
end
