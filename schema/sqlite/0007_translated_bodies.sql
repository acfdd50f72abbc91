-- The unified API (#19): with `proxy.keep_translated_bodies`, the bodies as the provider saw
-- them, next to `request_body` / `response_body` (what the client sent and got). NULL unless
-- the request was translated and the option is on.
ALTER TABLE requests ADD COLUMN upstream_request_body TEXT;
ALTER TABLE requests ADD COLUMN upstream_response_body TEXT;
