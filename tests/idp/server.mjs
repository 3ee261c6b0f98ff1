// A real OpenID provider for the interop tests: node server.mjs PORT
// Issues RFC 9068 JWT access tokens (typ at+jwt) by client_credentials for resource indicators,
// and opaque (reference) access tokens for https://opaque.portcullis.test, which resource
// servers check by introspection (RFC 7662) and clients revoke (RFC 7009).
// GET /test/introspections answers how many introspection requests it served.
import Provider from 'oidc-provider';

const port = Number(process.argv[2] ?? 0);
const issuer = `http://127.0.0.1:${port}`;

const resources = {
  'https://api.portcullis.test': { scope: 'agents:read reports:read', audience: 'https://api.portcullis.test' },
  'https://other.portcullis.test': { scope: 'agents:read', audience: 'https://other.portcullis.test' },
  'https://opaque.portcullis.test': { scope: 'agents:read reports:read', audience: 'https://opaque.portcullis.test', format: 'opaque' },
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'portcullis-test',
    client_secret: 'portcullis-test-secret-0123456789',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  }, {
    // The gateway, as an introspecting resource server, once per client authentication method.
    client_id: 'portcullis-gateway',
    client_secret: 'portcullis-gateway-secret-0123456789',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  }, {
    client_id: 'portcullis-gateway-post',
    client_secret: 'portcullis-gateway-post-secret-0123',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://api.portcullis.test',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        const info = resources[resource];
        if (!info) throw new Error(`unknown resource ${resource}`);
        const { format = 'jwt', ...server } = info;
        return { ...server, accessTokenFormat: format, accessTokenTTL: 300, jwt: { sign: { alg: 'RS256' } } };
      },
    },
  },
  // Keycloak-shaped roles, so the same route policies apply.
  extraTokenClaims: () => ({ realm_access: { roles: ['agent'] } }),
});

let introspections = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/test/introspections') {
    ctx.body = { count: introspections };
    return;
  }
  if (ctx.path === '/token/introspection') introspections += 1;
  await next();
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening at ${issuer}`);
});
