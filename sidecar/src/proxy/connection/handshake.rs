//! The connection handshake: STARTUP and AUTH pass through to the source,
//! SUPPORTED is capped to what the proxy speaks, and once the source says
//! READY the proxy's own links (target, and its own to the source) learn how
//! to introduce themselves.

use super::*;

impl Session {
    /// STARTUP: the proxy's CQL version forced if set, the compression
    /// noted for both links; passed on to the source.
    pub(super) async fn on_startup(self: &Arc<Self>, mut frame: Frame) -> Result<(), SessionError> {
        let options = match read_string_map(&frame.body) {
            Ok(o) => o,
            Err(e) => return self.malformed(&frame, e).await,
        };
        let mut options: Vec<(String, String)> = options;
        if let Some(cql) = &self.ctx.cql_version {
            options.retain(|(k, _)| !k.eq_ignore_ascii_case("CQL_VERSION"));
            options.push(("CQL_VERSION".into(), cql.clone()));
            let mut body = BytesMut::new();
            crate::proxy::wire::put_string_map(&mut body, &options);
            frame.body = body.freeze();
        }
        let compression = options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("COMPRESSION"))
            .map(|(_, v)| v.as_str());
        match Compression::from_option(compression) {
            Ok(c) => {
                // v5 only knows lz4: a snappy request at v5 is the
                // source's to refuse.
                self.client_state.set_compression(c);
                self.source_state.set_compression(c);
            }
            Err(e) => {
                return self
                    .reply(Frame::error(
                        frame.version,
                        frame.stream,
                        error_code::PROTOCOL_ERROR,
                        &e.to_string(),
                    ))
                    .await
            }
        }
        *self
            .startup_options
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = options;
        self.count("startup", "source");
        self.forward(frame)
    }

    /// AUTH_RESPONSE: the client's credentials noted (the target link and
    /// the proxy's own source link log in with them); passed on.
    pub(super) async fn on_auth_response(
        self: &Arc<Self>,
        frame: Frame,
    ) -> Result<(), SessionError> {
        let mut r = Reader::new(&frame.body);
        if let Ok(Some(token)) = r.bytes() {
            if let Some(c) = Credentials::from_plain_token(token) {
                *self.credentials.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
            }
        }
        self.count("auth", "source");
        self.forward(frame)
    }

    /// The source handshake is over: the proxy can now introduce itself to
    /// the target with the same options and credentials.
    pub(super) fn handshake_done(self: &Arc<Self>) {
        let hs = Handshake {
            version: self.version(),
            options: self
                .startup_options
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            credentials: self
                .ctx
                .target_credentials
                .as_ref()
                .and_then(|c| c.current())
                .or_else(|| {
                    self.credentials
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                }),
            keyspace: self.keyspace(),
        };
        *self
            .ctx
            .last_handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hs.clone());
        // The proxy's own source links log in as the client did.
        let on_source = Handshake {
            credentials: self
                .credentials
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            keyspace: None,
            ..hs.clone()
        };
        self.source_link.set_handshake(on_source.clone());
        self.source_copies.set_handshake(Handshake {
            keyspace: self.keyspace(),
            ..on_source.clone()
        });
        *self
            .ctx
            .last_source_handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(on_source);
        self.target.set_handshake(hs);
        if self.ctx.mode() != Mode::SourceOnly {
            let target = self.target.clone();
            tokio::spawn(async move {
                if let Err(e) = target.get().await {
                    debug!(error = %e, "target not reachable yet");
                }
            });
        }
    }
}

fn read_string_map(body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut r = Reader::new(body);
    Ok(r.string_map()?
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// SUPPORTED: offer only the versions under the cap, the forced CQL
/// version, and the compressions the proxy speaks.
pub(super) fn rewrite_supported(body: &[u8], cap: u8, cql: Option<&str>) -> Option<Bytes> {
    let mut r = Reader::new(body);
    let map = r.string_multimap().ok()?;
    let mut out = BytesMut::with_capacity(body.len());
    out.put_u16(map.len() as u16);
    for (key, values) in map {
        let values: Vec<&str> = match key {
            "PROTOCOL_VERSIONS" => values
                .into_iter()
                .filter(|v| {
                    v.split('/')
                        .next()
                        .and_then(|n| n.parse::<u8>().ok())
                        .is_some_and(|n| n <= cap)
                })
                .collect(),
            "CQL_VERSION" => match cql {
                Some(c) => vec![c],
                None => values,
            },
            "COMPRESSION" => values
                .into_iter()
                .filter(|v| v.eq_ignore_ascii_case("lz4") || v.eq_ignore_ascii_case("snappy"))
                .collect(),
            _ => values,
        };
        put_string(&mut out, key);
        out.put_u16(values.len() as u16);
        for v in values {
            put_string(&mut out, v);
        }
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_is_capped() {
        let mut b = BytesMut::new();
        b.put_u16(3);
        for (k, vs) in [
            (
                "PROTOCOL_VERSIONS",
                vec!["3/v3", "4/v4", "5/v5", "6/v6-beta"],
            ),
            ("CQL_VERSION", vec!["3.4.7"]),
            ("COMPRESSION", vec!["snappy", "lz4", "zstd"]),
        ] {
            put_string(&mut b, k);
            b.put_u16(vs.len() as u16);
            for v in vs {
                put_string(&mut b, v);
            }
        }
        let out = rewrite_supported(&b, 4, Some("3.4.5")).unwrap();
        let mut r = Reader::new(&out);
        let m = r.string_multimap().unwrap();
        assert_eq!(m[0].1, vec!["3/v3", "4/v4"]);
        assert_eq!(m[1].1, vec!["3.4.5"]);
        assert_eq!(m[2].1, vec!["snappy", "lz4"]);
    }
}
