// A real OpenID provider for the interop tests: node server.mjs PORT
// Issues RFC 9068 JWT access tokens (typ at+jwt) by client_credentials for resource indicators.
import Provider from 'oidc-provider';

const port = Number(process.argv[2] ?? 0);
const issuer = `http://127.0.0.1:${port}`;

const resources = {
  'https://api.portcullis.test': { scope: 'agents:read reports:read', audience: 'https://api.portcullis.test' },
  'https://other.portcullis.test': { scope: 'agents:read', audience: 'https://other.portcullis.test' },
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'portcullis-test',
    client_secret: 'portcullis-test-secret-0123456789',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
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
        return { ...info, accessTokenFormat: 'jwt', accessTokenTTL: 300, jwt: { sign: { alg: 'RS256' } } };
      },
    },
  },
  // Keycloak-shaped roles, so the same route policies apply.
  extraTokenClaims: () => ({ realm_access: { roles: ['agent'] } }),
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening at ${issuer}`);
});
